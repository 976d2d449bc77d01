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

// One read of a segment (docs/algorithms.md §1), portable (the AVX-512 path below is the
// same algorithm with fewer operations per entry). It streams through in L1-sized chunks: each
// chunk's max is found first, then its terms are summed against the running max, so the exps
// vectorise; when the running max rises, the sums are moved onto it (rebase_stats).
//
// With kDivide, the exp loop also divides `divide_row` (another row, same length) by
// `divide_by` in place, as true float32 divisions: apply_edt_ scales row r while it reads row
// r + 1, so the divider (not pipelined) works beside the exp polynomial's FMAs instead of
// after them. The stats are the same either way.
template <bool kDivide>
REAL_VLLM_INLINE SoftmaxStats segment_stats_generic(const float* row, int64_t n, float* divide_row,
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


#if defined(__GNUC__) && defined(__x86_64__)
#define REAL_VLLM_AVX512_STATS 1
}  // namespace real_vllm
#include <immintrin.h>
namespace real_vllm {

// Whether this CPU (and its OS) runs AVX-512F: then segment_stats takes the hand-vectorised
// path below, whatever clone of the calling kernel was picked.
inline bool cpu_has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}

#define REAL_VLLM_AVX512_INLINE inline __attribute__((target("avx512f"), always_inline))

// A chunk entry far below the running max m is skipped: dropping every entry l <= m - S
// from a row of V entries (m <= the row's max M, whose own term e^0 = 1 is never dropped,
// so Z >= 1) changes Z by at most V e^-S and sum e^(l-M) (M-l) by at most V S e^-S
// (u e^-u falls for u >= 1), so H = ln Z + sum e^(l-M) (M-l) / Z by at most
// V e^-S (1 + S + ln V) (the last term since sum.../Z <= H <= ln V). S = 36 and V <= 2^20
// give 1.3e-8, below 2^-24 = 6e-8: under half an ulp of any H >= 1 and under the float32
// summation's own error (docs/algorithms.md §8). Entries are tested in groups of 64.
constexpr float kSkipNats = 36.0f;
constexpr int64_t kSkipGroup = 64;  // 4 vectors of 16

// The largest float <= m - kSkipNats (rounded down, so a skipped entry is at least
// kSkipNats below m however large |m| is).
inline float skip_threshold(float m) {
  const double exact = double(m) - double(kSkipNats);
  float thr = static_cast<float>(exact);
  if (double(thr) > exact) thr = std::nextafter(thr, -kInf);
  return thr;
}

// Adds 2^y and 2^y y to z and s2 for y = (x - m) log2 e: the exp2_nonpos polynomial, with
// 2^round(y) applied by vscalefps. y is clamped at -160: 2^-160 rounds to 0 in float32, so
// masked (-inf) tokens add exactly nothing. round(y) is one vrndscaleps (to nearest, ties to
// even): the same k as exp2_nonpos's (y + kRound) - kRound for |y| < 2^22, in one operation
// instead of two (the exp pass is bound by its vector operations, not by memory).
REAL_VLLM_AVX512_INLINE void add_exp_terms(__m512 x, __m512 m, __m512& z, __m512& s2) {
  __m512 y = _mm512_mul_ps(_mm512_sub_ps(x, m), _mm512_set1_ps(kLog2e));
  y = _mm512_max_ps(_mm512_set1_ps(-160.0f), y);
  const __m512 k = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, k);
  __m512 p = _mm512_set1_ps(1.3276471e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6755419e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507131e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314694e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512 e = _mm512_scalef_ps(p, k);
  z = _mm512_add_ps(z, e);
  s2 = _mm512_fmadd_ps(e, y, s2);
}

// Lane masks of a group's four vectors when only `left` (< 64) entries remain.
REAL_VLLM_AVX512_INLINE void tail_masks(int64_t left, __mmask16 lanes[4]) {
  for (int v = 0; v < 4; ++v) {
    const int64_t count = std::max<int64_t>(0, std::min<int64_t>(16, left - 16 * v));
    lanes[v] = static_cast<__mmask16>((1u << count) - 1u);
  }
}

// Vector v of the group at p; in the tail group, lanes past the end read as -inf.
template <bool kTail>
REAL_VLLM_AVX512_INLINE __m512 load_entries(const float* p, int v, const __mmask16* lanes) {
  return kTail ? _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), lanes[v], p + 16 * v)
               : _mm512_loadu_ps(p + 16 * v);
}

// The lane-wise max of a group's four vectors; `nan` collects lanes holding a NaN.
template <bool kTail>
REAL_VLLM_AVX512_INLINE __m512 group_max_of(const float* p, const __mmask16* lanes, __mmask16& nan) {
  const __m512 v0 = load_entries<kTail>(p, 0, lanes), v1 = load_entries<kTail>(p, 1, lanes);
  const __m512 v2 = load_entries<kTail>(p, 2, lanes), v3 = load_entries<kTail>(p, 3, lanes);
  nan |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v2, v3, _CMP_UNORD_Q);
  return _mm512_max_ps(_mm512_max_ps(v0, v1), _mm512_max_ps(v2, v3));
}

// Whether x / t may be computed as divide_lanes does: t (and so 1 / t) a normal float well
// inside the range, so that no step below under- or overflows for 2^-64 <= |x| <= 2^64.
inline bool reciprocal_divides(float t) {
  const float magnitude = std::fabs(t);
  return magnitude >= 0x1p-60f && magnitude <= 0x1p60f;  // false for NaN too
}

// x / t correctly rounded, bit for bit what vdivps gives, in three FMA-port operations
// instead of the divider (whose 16-lane throughput bounds vLLM's own temperature step):
// with r = RN(1 / t) (relative error below 2^-24) q0 = RN(x r) is within one ulp of x / t,
// the remainder x - q0 t is exact under fma, and RN(q0 + (x - q0 t) r) = RN(x / t)
// (Markstein, "Computation of elementary functions on the IBM RISC System/6000 processor",
// IBM J. Res. Dev. 34(1), 1990; Muller et al., Handbook of Floating-Point Arithmetic, ch. 4).
// That needs no underflow or overflow on the way: for lanes with 2^-64 <= |x| <= 2^64 and t
// accepted by reciprocal_divides. A vector with any other lane (0, +-inf, NaN, tiny, huge)
// is divided by vdivps. tests/test_ops.py checks it against torch's division, exhaustively
// over the significands of x for a set of t.
REAL_VLLM_AVX512_INLINE __m512 divide_lanes(__m512 x, __m512 t, __m512 r) {
  constexpr int32_t kLowest = 0x1f800000;   // 2^-64
  constexpr int32_t kHighest = 0x5f800000;  // 2^64
  const __m512i magnitude = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
  const __mmask16 in_range =
      _mm512_cmp_epu32_mask(_mm512_sub_epi32(magnitude, _mm512_set1_epi32(kLowest)),
                            _mm512_set1_epi32(kHighest - kLowest), _MM_CMPINT_LE);
  if (in_range != 0xFFFF) return _mm512_div_ps(x, t);
  const __m512 q0 = _mm512_mul_ps(x, r);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, t, x), r, q0);
}

// Vector v of a group of `out` divided by t in place (r = 1 / t, or 0 where
// reciprocal_divides(t) is false: then vdivps); tail lanes are neither read nor written.
template <bool kTail>
REAL_VLLM_AVX512_INLINE void divide_vector(float* out, int v, const __mmask16* lanes, __m512 t,
                                           __m512 r, bool reciprocal) {
  float* p = out + 16 * v;
  const __m512 x = kTail ? _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), lanes[v], p) : _mm512_loadu_ps(p);
  const __m512 q = reciprocal ? divide_lanes(x, t, r) : _mm512_div_ps(x, t);
  if (kTail) {
    _mm512_mask_storeu_ps(p, lanes[v], q);
  } else {
    _mm512_storeu_ps(p, q);
  }
}

// row / t in place, true float32 divisions (temperature_row's AVX-512 path).
__attribute__((target("avx512f"))) inline void divide_row_avx512(float* row, int64_t n, float t) {
  const bool reciprocal = reciprocal_divides(t);
  const __m512 tv = _mm512_set1_ps(t), r = _mm512_set1_ps(reciprocal ? 1.0f / t : 0.0f);
  const int64_t full = n / kSkipGroup;
  __mmask16 tail[4];
  tail_masks(n - full * kSkipGroup, tail);
  for (int64_t g = 0; g < full; ++g) {
    for (int v = 0; v < 4; ++v) divide_vector<false>(row + g * kSkipGroup, v, tail, tv, r, reciprocal);
  }
  if (full * kSkipGroup < n) {
    for (int v = 0; v < 4; ++v) divide_vector<true>(row + full * kSkipGroup, v, tail, tv, r, reciprocal);
  }
}

// One group of the exp pass: the group at `ahead` (the next chunk's, or nullptr) prefetched;
// with kDivide, the other row's group divided (every group is, skipped or not); then the
// terms unless the group is entirely below threshold.
template <bool kDivide, bool kTail>
REAL_VLLM_AVX512_INLINE void exp_group(const float* p, const float* ahead, float* out,
                                       const __mmask16* lanes, __m512 divisor, __m512 reciprocal_of,
                                       bool reciprocal, const float* gmax, __m512 threshold,
                                       __m512 m, __m512 acc[4]) {
  if (ahead != nullptr) {
    for (int line = 0; line < 4; ++line) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + 16 * line), _MM_HINT_T0);
    }
  }
  if (kDivide) {
    for (int v = 0; v < 4; ++v) divide_vector<kTail>(out, v, lanes, divisor, reciprocal_of, reciprocal);
  }
  if (_mm512_cmp_ps_mask(_mm512_load_ps(gmax), threshold, _CMP_GT_OQ) == 0) return;
  add_exp_terms(load_entries<kTail>(p, 0, lanes), m, acc[0], acc[1]);
  add_exp_terms(load_entries<kTail>(p, 1, lanes), m, acc[2], acc[3]);
  add_exp_terms(load_entries<kTail>(p, 2, lanes), m, acc[0], acc[1]);
  add_exp_terms(load_entries<kTail>(p, 3, lanes), m, acc[2], acc[3]);
}

REAL_VLLM_AVX512_INLINE double sum_lanes(__m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

// segment_stats in AVX-512 intrinsics: the same chunks, running max and rebasing. The max
// pass keeps each group's max, so the exp pass skips groups entirely below
// m - kSkipNats; NaN is caught by an unordered compare (vmaxps drops a NaN).
template <bool kDivide>
__attribute__((target("avx512f"))) SoftmaxStats segment_stats_avx512(const float* row,
                                                                     int64_t n,
                                                                     float* divide_row,
                                                                     float divide_by) {
  constexpr int64_t kChunk = 2048;  // 8 KiB: still in L1 for the exp pass
  alignas(64) float group_max[kChunk / kSkipGroup][16];
  const bool reciprocal = kDivide && reciprocal_divides(divide_by);
  const __m512 divisor = _mm512_set1_ps(divide_by);
  const __m512 reciprocal_of = _mm512_set1_ps(reciprocal ? 1.0f / divide_by : 0.0f);
  SoftmaxStats st;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const float* x = row + c0;
    const int64_t len = std::min(kChunk, n - c0);
    const int64_t full = len / kSkipGroup;
    const bool has_tail = full * kSkipGroup < len;
    __mmask16 tail[4];
    tail_masks(len - full * kSkipGroup, tail);

    __m512 acc = _mm512_set1_ps(-kInf);
    __mmask16 nan = 0;
    for (int64_t g = 0; g < full; ++g) {
      const __m512 gmax = group_max_of<false>(x + g * kSkipGroup, tail, nan);
      _mm512_store_ps(group_max[g], gmax);
      acc = _mm512_max_ps(acc, gmax);
    }
    if (has_tail) {
      const __m512 gmax = group_max_of<true>(x + full * kSkipGroup, tail, nan);
      _mm512_store_ps(group_max[full], gmax);
      acc = _mm512_max_ps(acc, gmax);
    }
    const float cmax = _mm512_reduce_max_ps(acc);
    if (nan != 0 || cmax == kInf) {
      st.finite = false;
      if (kDivide) {  // the rest of the division
        for (int64_t i = c0; i < n; ++i) divide_row[i] = divide_row[i] / divide_by;
      }
      break;
    }
    if (cmax > st.max) rebase_stats(st, cmax);
    // Nothing finite yet (m = -inf): every group is skipped, the entries add nothing.
    const __m512 threshold = _mm512_set1_ps(st.max == -kInf ? kInf : skip_threshold(st.max));
    const __m512 m = _mm512_set1_ps(st.max);
    __m512 sums[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};  // z, s2 twice: two chains
    float* out = kDivide ? divide_row + c0 : nullptr;
    // The exp pass works from L1 and leaves the memory idle: meanwhile the next chunk is
    // fetched (the hardware prefetcher alone runs too few lines ahead), within the segment.
    for (int64_t g = 0; g < full; ++g) {
      const int64_t at = g * kSkipGroup;
      const float* ahead = c0 + kChunk + at < n ? x + kChunk + at : nullptr;
      exp_group<kDivide, false>(x + at, ahead, out + at, tail, divisor, reciprocal_of, reciprocal,
                                group_max[g], threshold, m, sums);
    }
    if (has_tail) {
      const int64_t at = full * kSkipGroup;
      exp_group<kDivide, true>(x + at, nullptr, out + at, tail, divisor, reciprocal_of, reciprocal,
                               group_max[full], threshold, m, sums);
    }
    st.z += sum_lanes(_mm512_add_ps(sums[0], sums[2]));
    st.s += kLn2 * sum_lanes(_mm512_add_ps(sums[1], sums[3]));
  }
  return st;
}
#endif

// One read of a segment: the AVX-512 path where the CPU has it, else the portable one.
template <bool kDivide>
REAL_VLLM_INLINE SoftmaxStats segment_stats(const float* row, int64_t n, float* divide_row,
                                            float divide_by) {
#ifdef REAL_VLLM_AVX512_STATS
  if (cpu_has_avx512()) return segment_stats_avx512<kDivide>(row, n, divide_row, divide_by);
#endif
  return segment_stats_generic<kDivide>(row, n, divide_row, divide_by);
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
