// Per-row statistics of float32 logits, shared by the entropy, EDT and top-p kernels.
//
// Every loop here runs under `omp simd`: the kernels are bound by memory and by exp, and
// libm's expf is an opaque call that only vectorises under -ffast-math, which the true
// divisions of the temperature kernels forbid. exp_nonpos below is the vectorisable
// replacement.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// The per-row kernels of the op files carry this attribute: they are compiled for
// x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) as well as for the baseline setup.py builds
// for, and the best one for the running CPU is picked at load time (GCC function
// multiversioning; GCC 12 added these arch levels). On the SSE2 baseline the exp-bound loops
// run 3-5x slower. Elsewhere it is empty and the baseline build serves.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__)
#define REAL_VLLM_ROW_KERNEL \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REAL_VLLM_ROW_KERNEL
#endif

// The helpers below must be inlined into each clone of a row kernel to get its instruction
// set; an out-of-line copy would be compiled for the baseline only.
#if defined(__GNUC__)
#define REAL_VLLM_INLINE inline __attribute__((always_inline))
#else
#define REAL_VLLM_INLINE inline
#endif

namespace real_vllm {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// exp_nonpos clamps its argument here: e^-88 is below the smallest normal float, so it and
// everything under it (-inf included) comes out exactly 0.
constexpr float kExpFloor = -88.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr double kLn2 = 0.69314718055994531;

// max(x, kExpFloor) (-inf -> kExpFloor) in bit operations. A plain select would let the
// optimiser (PRE) fold the clamped path of exp_nonpos into a constant and split the loop
// body in two, and a loop with a branch does not vectorise under -ftrapping-math.
REAL_VLLM_INLINE float clamp_to_exp_floor(float x) {
  int32_t x_bits, floor_bits;
  std::memcpy(&x_bits, &x, sizeof x_bits);
  std::memcpy(&floor_bits, &kExpFloor, sizeof floor_bits);
  const int32_t keep = -static_cast<int32_t>(x > kExpFloor);
  const int32_t bits = (x_bits & keep) | (floor_bits & ~keep);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// Rounding by adding 1.5 * 2^23: t = y + kRound holds round(y) in its low mantissa bits, so
// k = t - kRound is round(y) as a float and 2^k comes from t's bits, with no float->int
// conversion (no UB, vectorises). k = -127 gives the exponent field 0, i.e. exactly 0.0.
constexpr float kRound = 12582912.0f;
REAL_VLLM_INLINE float pow2_of_rounded(float t) {
  constexpr int32_t kRoundBits = 0x4B400000;
  int32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  const uint32_t pow2_bits = static_cast<uint32_t>(t_bits - kRoundBits + 127) << 23;
  float pow2k;
  std::memcpy(&pow2k, &pow2_bits, sizeof pow2k);
  return pow2k;
}

// exp(x) for x <= 0, branch-free so it vectorises; relative error below 1e-7 (Cephes expf:
// Cody-Waite reduction by ln 2, then a polynomial). x below about -87.7, -inf and NaN give
// exactly 0, so masked (-inf) tokens contribute exactly nothing.
REAL_VLLM_INLINE float exp_nonpos(float x) {
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 split so k * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;

  const float xc = clamp_to_exp_floor(x);
  const float t = xc * kLog2e + kRound;  // k = round(x / ln 2); x below about -87.7: 2^k = 0
  const float k = t - kRound;
  const float pow2k = pow2_of_rounded(t);

  float r = xc - k * kLn2Hi;
  r = r - k * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * pow2k;
}

// 2^y for -127 <= y <= 0 (callers clamp), branch-free: 2^round(y) from the exponent field
// times a degree-5 polynomial for 2^f, f in [-1/2, 1/2] (relative error below 2.4e-7, fitted for
// this project by weighted least squares on the relative error). y = -127 gives exactly 0.
// Cheaper than exp_nonpos (no Cody-Waite split, one degree less): the entropy pass is bound
// by exps, not by memory.
REAL_VLLM_INLINE float exp2_nonpos(float y) {
  const float t = y + kRound;
  const float f = y - (t - kRound);
  const float pow2k = pow2_of_rounded(t);
  float p = 1.3276471e-3f;
  p = p * f + 9.6755419e-3f;
  p = p * f + 5.5507131e-2f;
  p = p * f + 2.4022120e-1f;
  p = p * f + 6.9314694e-1f;
  p = p * f + 1.0f;
  return p * pow2k;
}

// Softmax statistics of one row relative to its max m:
//   z = sum exp(l - m),  s = sum exp(l - m) (l - m),  so  H = ln z - s / z.
struct SoftmaxStats {
  float max = -kInf;    // -inf while every entry is -inf
  double z = 0.0;
  double s = 0.0;
  bool finite = true;   // false when the row holds a NaN or +inf (softmax undefined)
};

// Moves the sums onto a larger max m': z <- e^(m-m') z, s <- e^(m-m') (s + z (m - m')).
REAL_VLLM_INLINE void rebase_stats(SoftmaxStats& st, float new_max) {
  if (st.z > 0.0) {  // z > 0 exactly when the old max is finite (it contributes e^0)
    const double shift = double(st.max) - double(new_max);
    const double a = std::exp(shift);
    st.s = a * (st.s + st.z * shift);
    st.z *= a;
  }
  st.max = new_max;
}

// The online-softmax merge of two parts' stats (Milakov and Gimelshein, "Online normalizer
// calculation for softmax", arXiv 1805.02867, with s carried along): acc <- acc (+) part.
REAL_VLLM_INLINE void merge_stats(SoftmaxStats& acc, SoftmaxStats part) {
  acc.finite = acc.finite && part.finite;
  if (!acc.finite) return;
  if (part.max > acc.max) {
    rebase_stats(acc, part.max);
  } else {
    rebase_stats(part, acc.max);
  }
  acc.z += part.z;
  acc.s += part.s;
}

// Rows are reduced in segments of this many entries, each on its own, and the segments'
// stats merged left to right: the result is the same whether the segments run on one thread
// or on several (apply_edt_ splits a row across threads at small batch), so a row's entropy is
// bit-identical at every batch size and thread count.
constexpr int64_t kStatsSegment = 16384;

// One read of a segment (docs/algorithms.md §1). It streams through in L1-sized chunks: each
// chunk's max is found first, then its terms are summed against the running max, so the exps
// vectorise; when the running max rises, the sums are moved onto it (rebase_stats).
//
// With kDivide, the exp loop also divides `divide_row` (another row, same length) by
// `divide_by` in place, as true float32 divisions: apply_edt_ scales row r while it reads row
// r + 1, so the divider (not pipelined) works beside the exp polynomial's FMAs instead of
// after them. The stats are the same either way.
template <bool kDivide>
REAL_VLLM_INLINE SoftmaxStats segment_stats(const float* row, int64_t n, float* divide_row,
                                            float divide_by) {
  constexpr int64_t kChunk = 2048;  // 8 KiB: still in L1 for the second loop
  SoftmaxStats st;
  int64_t c0 = 0;
  for (; c0 < n; c0 += kChunk) {
    const float* x = row + c0;
    const int64_t len = std::min(kChunk, n - c0);

    float cmax = -kInf;
    int bad = 0;
#pragma omp simd reduction(max : cmax) reduction(| : bad)
    for (int64_t i = 0; i < len; ++i) {
      cmax = x[i] > cmax ? x[i] : cmax;
      bad |= !(x[i] < kInf);  // NaN or +inf
    }
    if (bad) {
      st.finite = false;
      break;
    }
    if (cmax > st.max) rebase_stats(st, cmax);
    if (st.max == -kInf) {  // nothing finite yet: these entries add nothing
      if (kDivide) {
        float* out = divide_row + c0;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) out[i] = out[i] / divide_by;
      }
      continue;
    }

    // In base 2 (y = (l - m) log2 e, so s = ln 2 * sum e y), with float sums over the chunk
    // (at most 128 terms a SIMD lane) moved into the double totals once a chunk.
    const float m = st.max;
    float z = 0.0f, s2 = 0.0f;
    float* out = kDivide ? divide_row + c0 : nullptr;
#pragma omp simd reduction(+ : z, s2)
    for (int64_t i = 0; i < len; ++i) {
      float y = (x[i] - m) * kLog2e;  // <= 0 however large m is (no fused m log2 e rounding)
      y = y > -127.0f ? y : -127.0f;  // a masked token: y = -127, e = 0, so never 0 * -inf
      const float e = exp2_nonpos(y);
      z += e;
      s2 += e * y;
      if (kDivide) out[i] = out[i] / divide_by;
    }
    st.z += z;
    st.s += kLn2 * double(s2);
  }
  if (kDivide && c0 < n) {  // a NaN or +inf ended the sweep: the rest of the division
    float* out = divide_row + c0;
    const int64_t len = n - c0;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) out[i] = out[i] / divide_by;
  }
  return st;
}

// The row's stats: its segments' stats merged left to right.
REAL_VLLM_INLINE SoftmaxStats softmax_stats(const float* row, int64_t n) {
  SoftmaxStats st;
  for (int64_t s0 = 0; s0 < n && st.finite; s0 += kStatsSegment) {
    merge_stats(st, segment_stats<false>(row + s0, std::min(kStatsSegment, n - s0), nullptr, 1.0f));
  }
  return st;
}

// Entropy in nats with the non-finite-row policy of reference.py: NaN for a row with a NaN
// or +inf, 0 for an all -inf row, and never -0.0 or a rounding negative (EDT divides by H,
// and theta / -0.0 = -inf would give T = inf instead of t0 * min_scale).
REAL_VLLM_INLINE float entropy_nats(const SoftmaxStats& st) {
  if (!st.finite) return kNaN;
  if (st.z == 0.0) return 0.0f;
  const float h = static_cast<float>(std::log(st.z) - st.s / st.z);
  return h > 0.0f ? h : 0.0f;
}

// Max, smallest finite entry, and whether the row is free of NaN / +inf: one read, no exps.
struct RowRange {
  float max = -kInf;
  float min_finite = kInf;  // +inf when every entry is -inf
  bool finite = true;
};

REAL_VLLM_INLINE RowRange row_range(const float* row, int64_t n) {
  float mx = -kInf, mn = kInf;
  int bad = 0;
#pragma omp simd reduction(max : mx) reduction(min : mn) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    const float v = row[i];
    mx = v > mx ? v : mx;
    mn = (v > -kInf && v < mn) ? v : mn;
    bad |= !(v < kInf);
  }
  RowRange rr;
  rr.max = mx;
  rr.min_finite = mn;
  rr.finite = !bad;
  return rr;
}

}  // namespace real_vllm
