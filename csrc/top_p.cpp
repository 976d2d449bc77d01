// top_p_mask_(logits, top_p): set every logit outside its row's nucleus to -inf, in place.
//
// The nucleus of docs/algorithms.md §3 (REAL samples from it with a per-step p, §2.2): found
// through tau, the crossing token's logit, with target = p Z: every l > tau is kept and, of the
// entries equal to tau, the n lowest indices (n from the mass above tau).
// Sort-free: instead of sorting the vocabulary, per row
//   1. one read for the max m and the smallest finite logit;
//   2. one read computing exp(l - m) into a histogram of mass over linear buckets of
//      d = m - l (plus an overflow bucket), and Z as its total;
//   3. a walk down the histogram from the max finds the bucket where the cumulative mass
//      crosses the target; one read gathers that bucket's logits (about a hundred on a
//      151k-token row), and only those are sorted to place tau exactly;
//   4. one read+write masks l < tau (where tied tokens at tau are dropped, a counting scan
//      first finds the index past which they go: it stops there, and only such rows run it).
// The buckets only decide how much gets sorted: tau is exact whatever the bucket widths.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <functional>
#include <vector>

#include "checks.h"
#include "row_stats.h"

namespace real_vllm {
namespace {

constexpr int32_t kBuckets = 2048;  // + 1 overflow bucket: 16 KiB of double masses, in L1
// Buckets cover d in [0, span), span = the row's finite range capped at kMaxSpan, so a
// narrow row still gets the full resolution. Tokens with d >= 32 together weigh below
// V e^-32 of Z (2e-9 at V = 152k), less than the gap between 1 and the largest float32 p < 1,
// so the crossing practically never lands in the overflow bucket (it would still be exact).
constexpr float kMaxSpan = 32.0f;
constexpr float kMinSpan = 1e-6f;   // keeps kBuckets / span finite on near-constant rows
constexpr int64_t kChunk = 1024;    // exps and bucket indices staged per chunk on the stack
constexpr int64_t kBlock = 32;      // the gather tests a block at once: hits are rare

struct Scratch {
  std::array<double, kBuckets + 1> mass;
  std::vector<float> crossing;  // the crossing bucket's logits; grows to the largest seen
};

REAL_VLLM_ROW_KERNEL void top_p_row(float* row, int64_t n, float p, Scratch& sc) {
  if (p >= 1.0f) return;  // the nucleus is the whole row
  const RowRange rr = row_range(row, n);
  // Softmax undefined (NaN / +inf) or nothing to sample (all -inf): the row stays as it is.
  if (!rr.finite || rr.max == -kInf) return;

  const float m = rr.max;
  const float span = std::clamp(m - rr.min_finite, kMinSpan, kMaxSpan);
  const float per_unit = static_cast<float>(kBuckets) / span;
  // The same float operations in passes 2 and 3, so an entry lands in the same bucket both
  // times. d = +inf (a -inf logit) goes to the overflow bucket.
  const auto bucket_of = [m, per_unit](float l) -> int32_t {
    const float b = (m - l) * per_unit;
    return b < static_cast<float>(kBuckets) ? static_cast<int32_t>(b) : kBuckets;
  };

  // Pass 2: histogram. Masses accumulate in double: the result may differ from the exact
  // nucleus only for tokens whose cumulative mass is within rounding of p.
  sc.mass.fill(0.0);
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const float* x = row + c0;
    const int64_t len = std::min(kChunk, n - c0);
    float e[kChunk];
    int32_t b[kChunk];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      e[i] = exp_nonpos(x[i] - m);
      b[i] = bucket_of(x[i]);
    }
    for (int64_t i = 0; i < len; ++i) sc.mass[b[i]] += e[i];
  }

  // Z sums the buckets in the order the walk below does, so cum can reach p Z (< Z) at the
  // latest in the last non-empty bucket. p <= 0 (or NaN) targets 0: the top-1 and its ties.
  double z = 0.0;
  for (const double w : sc.mass) z += w;
  const double target = (p > 0.0f ? double(p) : 0.0) * z;
  double cum = 0.0;  // mass of the buckets above the crossing one
  int32_t cross = 0;
  while (cross < kBuckets && cum + sc.mass[cross] < target) cum += sc.mass[cross++];

  // Pass 3: gather the crossing bucket and place tau inside it, most probable first.
  std::vector<float>& v = sc.crossing;
  v.clear();
  for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const float* x = row + c0;
    const int64_t len = std::min(kBlock, n - c0);
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t i = 0; i < len; ++i) hit |= bucket_of(x[i]) == cross;
    if (!hit) continue;
    for (int64_t i = 0; i < len; ++i) {
      if (bucket_of(x[i]) == cross) v.push_back(x[i]);
    }
  }
  std::sort(v.begin(), v.end(), std::greater<float>());
  // Walk the bucket most probable first. The entries equal to tau are contiguous in v and
  // all of them are in v (equal logits share a bucket); the walk's own double sum decides
  // how many of them the target needs. If rounding keeps the walk short of the target, the
  // whole bucket is kept.
  float tau = v.empty() ? -kInf : v.back();
  size_t cross_at = v.empty() ? 0 : v.size() - 1;
  for (size_t j = 0; j < v.size(); ++j) {
    cum += exp_nonpos(v[j] - m);
    if (cum >= target) {
      tau = v[j];
      cross_at = j;
      break;
    }
  }
  const auto ties = std::equal_range(v.begin(), v.end(), tau, std::greater<float>());
  const int64_t n_tied = ties.second - ties.first;
  // Walk short of the target: keep every tie.
  const int64_t n_keep = cum >= target ? int64_t(cross_at) - (ties.first - v.begin()) + 1 : n_tied;

  if (n_keep >= n_tied) {
    if (tau <= rr.min_finite) return;  // every finite logit is in the nucleus
    // Pass 4: mask.
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) row[i] = row[i] >= tau ? row[i] : -kInf;
    return;
  }
  // Pass 4 with a tie to break: the first n_keep entries equal to tau, in index order, stay.
  // A counting scan (blocks of kScan, stopping where the count passes n_keep) finds the index
  // `cut` of the first tie to drop; then l >= tau is kept before it and l > tau from it on.
  constexpr int64_t kScan = 256;
  int64_t cut = n, seen = 0;
  for (int64_t c0 = 0; c0 < n && cut == n; c0 += kScan) {
    const float* x = row + c0;
    const int64_t len = std::min(kScan, n - c0);
    int32_t hits = 0;
#pragma omp simd reduction(+ : hits)
    for (int64_t i = 0; i < len; ++i) hits += x[i] == tau ? 1 : 0;
    if (seen + hits <= n_keep) {
      seen += hits;
      continue;
    }
    for (int64_t i = 0; i < len; ++i) {
      if (x[i] == tau && ++seen > n_keep) {
        cut = c0 + i;
        break;
      }
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < cut; ++i) row[i] = row[i] >= tau ? row[i] : -kInf;
#pragma omp simd
  for (int64_t i = cut; i < n; ++i) row[i] = row[i] > tau ? row[i] : -kInf;
}

void top_p_mask_(at::Tensor& logits, const at::Tensor& top_p) {
  constexpr const char* kOp = "real_vllm::top_p_mask_";
  check_logits(logits, kOp);
  check_row_param(top_p, "top_p", logits, kOp);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  float* x = logits.mutable_data_ptr<float>();
  const float* p = top_p.const_data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    for (int64_t r = begin; r < end; ++r) top_p_row(x + r * vocab, vocab, p[r], sc);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) { m.impl("top_p_mask_", &top_p_mask_); }

}  // namespace real_vllm
