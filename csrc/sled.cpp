// SLED, Self Logits Evolution Decoding (Zhang et al., arXiv 2411.02433; docs/algorithms.md §4),
// in two streaming steps so that early-layer logits are never held for the whole vocabulary,
// after the candidates:
//
//   sled_top_k_: the top-k candidates of each row of the final logits in one streaming pass
//     (a running top-(k+1) that only looks inside SIMD blocks whose max beats its k+1-th
//     value), instead of torch.topk's partial sort of every row;
//   sled_stats_: merge one vocabulary chunk of the early logits [L, B, C] into the per-(layer,
//     row) stats m, z, a, s, dd of §4.2 against the final logits x, and pick up l_n at the
//     candidates;
//   sled_finish_: the cosines from those scalars, P_latent, and the evolution of each row in
//     place (§4.1).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checks.h"
#include "row_stats.h"

namespace real_vllm {
namespace {

enum Stat { kMax = 0, kZ, kA, kS, kDD, kNumStats };

// The running stats of one (layer, row): max m and, against it, z, a, s; dd.
struct PairStats {
  float m;
  double z, a, s, dd;
};

// Merges one chunk of a (layer, row) into its running stats in one read: each 2,048-entry block
// (8 KiB, still in L1 for the second loop) takes its max first, the sums are moved onto it when
// it rises, then the block's terms are summed against the running max. As in softmax_stats
// (row_stats.h): in base 2 (y = (l_n - m) log2 e, e^(l_n - m) = 2^y, clamped at 2^-127 = 0)
// with float sums over a block moved into double totals, so the loop runs at full SIMD width.
// Entries ahead of the first finite one are summed against m = -inf: they weigh 0, and a
// masked early entry where the final logit is finite still makes a NaN (no vote), as if summed
// against the final max. A chunk whose entries are all -inf leaves the stats as they were.
REAL_VLLM_ROW_KERNEL PairStats merge_chunk(PairStats st, const float* early, const float* final_row,
                                          int64_t n) {
  constexpr int64_t kBlock = 2048;
  PairStats out = st;
  out.dd = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const float* e = early + b0;
    const float* f = final_row + b0;
    const int64_t len = std::min(kBlock, n - b0);
    float block_max = -kInf;
#pragma omp simd reduction(max : block_max)
    for (int64_t v = 0; v < len; ++v) block_max = e[v] > block_max ? e[v] : block_max;
    if (block_max > out.m) {
      if (out.m > -kInf) {
        const double r = std::exp(double(out.m) - double(block_max));
        out.z *= r;
        out.a *= r;
        out.s *= r * r;
      }
      out.m = block_max;
    }
    const float m = out.m;
    float z = 0, a = 0, s = 0, dd = 0;
#pragma omp simd reduction(+ : z, a, s, dd)
    for (int64_t v = 0; v < len; ++v) {
      float y = (e[v] - m) * kLog2e;
      y = y > -127.0f ? y : -127.0f;  // NaN (-inf - -inf) too
      const float p = exp2_nonpos(y);
      const float d = f[v] > -kInf ? e[v] - f[v] : 0.0f;
      z += p;
      a += d * p;
      s += p * p;
      dd += d * d;
    }
    out.z += z;
    out.a += a;
    out.s += s;
    out.dd += dd;
  }
  if (!(out.m > -kInf)) return st;
  out.dd += st.dd;
  return out;
}

// The top `keep` entries of one row, values descending, ties in index order (an entry equal
// to the keep-th is not taken, and an insertion goes after the values equal to it); returns
// how many slots hold finite entries, or -1 if the row holds NaN or +inf. Most 64-entry
// blocks of a real row lie below the running keep-th value, so the loop is a vector max.
REAL_VLLM_ROW_KERNEL int64_t row_top(const float* row, int64_t n, int64_t keep, float* values,
                                    int64_t* ids) {
  constexpr int64_t kBlock = 64;
  int64_t filled = 0;
  float threshold = -kInf;  // the keep-th value once `keep` entries are held
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const float* x = row + b0;
    const int64_t len = std::min(kBlock, n - b0);
    float mx = -kInf;
    int32_t nonfinite = 0;
#pragma omp simd reduction(max : mx) reduction(+ : nonfinite)
    for (int64_t v = 0; v < len; ++v) {
      mx = x[v] > mx ? x[v] : mx;
      nonfinite += !(x[v] < kInf);  // NaN or +inf
    }
    if (nonfinite) return -1;
    if (!(mx > threshold)) continue;
    for (int64_t v = 0; v < len; ++v) {
      const float value = x[v];
      if (!(value > threshold)) continue;
      int64_t pos = filled < keep ? filled++ : keep - 1;
      for (; pos > 0 && values[pos - 1] < value; --pos) {
        values[pos] = values[pos - 1];
        ids[pos] = ids[pos - 1];
      }
      values[pos] = value;
      ids[pos] = b0 + v;
      if (filled == keep) threshold = values[keep - 1];
    }
  }
  return filled;
}

// candidates [B, W] (W <= kMaxFusedTopK), count [B]: per row the W most probable tokens of the
// final logits, descending, and how many of them are live, min(k, finite entries), as
// ops._sled_candidates takes from torch.topk. count is 0 for a row with NaN or +inf, and -1
// where a tie straddles the count-th place: torch.topk's choice among equal values is its own,
// so the caller asks it for those rows. Slots beyond the finite entries hold token 0.
constexpr int64_t kMaxFusedTopK = 256;

void sled_top_k_(const at::Tensor& logits, const at::Tensor& k, at::Tensor& candidates,
                 at::Tensor& count) {
  const char* op = "real_vllm::sled_top_k_";
  check_logits(logits, op);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(k.scalar_type() == at::kLong && k.is_contiguous() && k.device().is_cpu() &&
                  k.sizes() == at::IntArrayRef({batch}),
              op, ": k must be contiguous int64 [", batch, "] on the CPU");
  TORCH_CHECK(candidates.scalar_type() == at::kLong && candidates.is_contiguous() &&
                  candidates.dim() == 2 && candidates.size(0) == batch &&
                  candidates.device().is_cpu(),
              op, ": candidates must be contiguous int64 [", batch, ", K] on the CPU");
  const int64_t width = candidates.size(1);
  TORCH_CHECK(width >= 1 && width <= std::min(vocab, kMaxFusedTopK), op, ": candidates width ",
              width, " must be in 1..min(vocab, ", kMaxFusedTopK, ")");
  TORCH_CHECK(count.scalar_type() == at::kLong && count.is_contiguous() &&
                  count.sizes() == at::IntArrayRef({batch}) && count.device().is_cpu(),
              op, ": count must be contiguous int64 [", batch, "] on the CPU");
  const float* x = logits.const_data_ptr<float>();
  const int64_t* kk = k.const_data_ptr<int64_t>();
  int64_t* cand = candidates.mutable_data_ptr<int64_t>();
  int64_t* cnt = count.mutable_data_ptr<int64_t>();
  // One more than W: the value after the count-th tells whether a tie straddles it.
  const int64_t keep = std::min(width + 1, vocab);

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> values(keep);
    std::vector<int64_t> ids(keep);
    for (int64_t b = begin; b < end; ++b) {
      int64_t* out = cand + b * width;
      const int64_t finite = row_top(x + b * vocab, vocab, keep, values.data(), ids.data());
      const int64_t held = std::max<int64_t>(finite, 0);
      for (int64_t j = 0; j < width; ++j) out[j] = j < held ? ids[j] : 0;
      if (finite < 0) {
        cnt[b] = 0;
        continue;
      }
      const int64_t c = std::min({kk[b], width, finite});
      const bool tie = c >= 1 && c < finite && values[c - 1] == values[c];
      cnt[b] = tie ? -1 : c;
    }
  });
}

void sled_stats_(const at::Tensor& logits, const at::Tensor& chunk, int64_t offset,
                 const at::Tensor& candidates, at::Tensor& stats, at::Tensor& candidate_logits) {
  const char* op = "real_vllm::sled_stats_";
  check_logits(logits, op);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(chunk.scalar_type() == at::kFloat && chunk.is_contiguous() && chunk.dim() == 3 &&
                  chunk.size(1) == batch && chunk.device().is_cpu(),
              op, ": chunk must be contiguous float32 [layers, ", batch, ", C] on the CPU, got ",
              chunk.sizes());
  const int64_t layers = chunk.size(0), width = chunk.size(2);
  TORCH_CHECK(offset >= 0 && offset + width <= vocab, op, ": columns ", offset, "..",
              offset + width, " are outside the vocabulary of ", vocab);
  TORCH_CHECK(candidates.scalar_type() == at::kLong && candidates.is_contiguous() &&
                  candidates.dim() == 2 && candidates.size(0) == batch,
              op, ": candidates must be contiguous int64 [", batch, ", K]");
  const int64_t k = candidates.size(1);
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.is_contiguous() &&
                  stats.sizes() == at::IntArrayRef({kNumStats, layers, batch}),
              op, ": stats must be contiguous float32 [5, ", layers, ", ", batch, "]");
  TORCH_CHECK(candidate_logits.scalar_type() == at::kFloat && candidate_logits.is_contiguous() &&
                  candidate_logits.sizes() == at::IntArrayRef({layers, batch, k}),
              op, ": candidate_logits must be contiguous float32 [", layers, ", ", batch, ", ", k,
              "]");
  const float* x = logits.const_data_ptr<float>();
  const float* early = chunk.const_data_ptr<float>();
  const int64_t* cand = candidates.const_data_ptr<int64_t>();
  float* st = stats.mutable_data_ptr<float>();
  float* cl = candidate_logits.mutable_data_ptr<float>();
  const int64_t pairs = layers * batch;

  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p % batch;
      const float* e = early + p * width;
      const float* f = x + b * vocab + offset;
      float* slot[kNumStats];
      for (int stat = 0; stat < kNumStats; ++stat) slot[stat] = st + stat * pairs + p;
      const PairStats merged = merge_chunk({*slot[kMax], *slot[kZ], *slot[kA], *slot[kS], *slot[kDD]},
                                           e, f, width);
      *slot[kMax] = merged.m;
      *slot[kZ] = float(merged.z);
      *slot[kA] = float(merged.a);
      *slot[kS] = float(merged.s);
      *slot[kDD] = float(merged.dd);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = cand[b * k + j] - offset;
        if (i >= 0 && i < width) cl[p * k + j] = e[i];
      }
    }
  });
}

// The final row's softmax stats (softmax_stats, compiled for the running CPU's vector width:
// sled_finish_ itself is not multiversioned, and the baseline build of this exp-bound pass is
// several times slower), and the row overwritten as it goes: each segment, once read, has its
// finite entries set to `value` (masked ones stay -inf) while it is still in L2, so the row
// is read from memory once for both.
REAL_VLLM_ROW_KERNEL SoftmaxStats final_row_stats_then_fill(float* row, int64_t n, float value) {
  SoftmaxStats st;
  for (int64_t s0 = 0; s0 < n; s0 += kStatsSegment) {
    float* segment = row + s0;
    const int64_t len = std::min(kStatsSegment, n - s0);
    merge_stats(st, segment_stats<false>(segment, len, nullptr, 1.0f));
#pragma omp simd
    for (int64_t v = 0; v < len; ++v) segment[v] = segment[v] > -kInf ? value : segment[v];
  }
  return st;
}

void sled_finish_(at::Tensor& logits, const at::Tensor& stats, const at::Tensor& candidates,
                  const at::Tensor& count, const at::Tensor& candidate_logits,
                  const at::Tensor& alpha, const at::Tensor& lower_bound) {
  const char* op = "real_vllm::sled_finish_";
  check_logits(logits, op);
  check_row_param(alpha, "alpha", logits, op);
  check_row_param(lower_bound, "lower_bound", logits, op);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(candidates.scalar_type() == at::kLong && candidates.is_contiguous() &&
                  candidates.dim() == 2 && candidates.size(0) == batch,
              op, ": candidates must be contiguous int64 [", batch, ", K]");
  const int64_t k = candidates.size(1);
  TORCH_CHECK(count.scalar_type() == at::kLong && count.is_contiguous() &&
                  count.sizes() == at::IntArrayRef({batch}),
              op, ": count must be contiguous int64 [", batch, "]");
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.is_contiguous() && stats.dim() == 3 &&
                  stats.size(0) == kNumStats && stats.size(2) == batch,
              op, ": stats must be contiguous float32 [5, layers, ", batch, "]");
  const int64_t layers = stats.size(1);
  TORCH_CHECK(candidate_logits.scalar_type() == at::kFloat && candidate_logits.is_contiguous() &&
                  candidate_logits.sizes() == at::IntArrayRef({layers, batch, k}),
              op, ": candidate_logits must be contiguous float32 [", layers, ", ", batch, ", ", k,
              "]");
  float* x = logits.mutable_data_ptr<float>();
  const float* st = stats.const_data_ptr<float>();
  const int64_t* cand = candidates.const_data_ptr<int64_t>();
  const int64_t* cnt = count.const_data_ptr<int64_t>();
  const float* cl = candidate_logits.const_data_ptr<float>();
  const float* al = alpha.const_data_ptr<float>();
  const float* lb = lower_bound.const_data_ptr<float>();
  const int64_t pairs = layers * batch;

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> latent(k), final_at(k);
    std::vector<float> evolved(k);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c = std::min(cnt[b], k);
      if (c <= 0) continue;
      float* row = x + b * vocab;
      const int64_t* ids = cand + b * k;
      for (int64_t j = 0; j < c; ++j) {
        TORCH_CHECK(ids[j] >= 0 && ids[j] < vocab, op, ": candidate ", ids[j], " is outside the vocabulary");
      }
      for (int64_t j = 0; j < c; ++j) final_at[j] = row[ids[j]];  // l_N(i), before the row is overwritten
      const SoftmaxStats fs = final_row_stats_then_fill(row, vocab, lb[b]);
      const double log_z = double(fs.max) + std::log(fs.z);
      double total = 0;
      std::fill(latent.begin(), latent.begin() + c, 0.0);
      for (int64_t l = 0; l < layers; ++l) {
        const int64_t p = l * batch + b;
        const double z = st[kZ * pairs + p], m = st[kMax * pairs + p];
        const double mean_d = st[kA * pairs + p] / z;        // (l_n - x) . p_n
        const double p_sq = st[kS * pairs + p] / (z * z);    // |p_n|^2
        const double d_sq = st[kDD * pairs + p];             // |l_n - x|^2
        for (int64_t j = 0; j < c; ++j) {
          const double e = cl[p * k + j];
          const double prob = std::exp(e - m) / z;
          const double dot = mean_d - (e - final_at[j]);
          const double denom = std::sqrt(d_sq * (p_sq - 2.0 * prob + 1.0));
          const double cos = denom > 0 ? dot / denom : 0.0;
          const double w = cos > 0 ? cos * cos : 0.0;
          latent[j] += w;
          total += w;
        }
      }
      for (int64_t j = 0; j < c; ++j) {
        const double l_final = final_at[j];
        const double p_latent = total > 0 ? latent[j] / total : 0.0;
        evolved[j] = float(l_final - double(al[b]) * (std::exp(l_final - log_z) - p_latent));
      }
      for (int64_t j = 0; j < c; ++j) row[ids[j]] = evolved[j];
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) {
  m.impl("sled_top_k_", &sled_top_k_);
  m.impl("sled_stats_", &sled_stats_);
  m.impl("sled_finish_", &sled_finish_);
}

}  // namespace real_vllm
