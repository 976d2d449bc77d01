// EDT, entropy-based dynamic temperature (arXiv 2403.14541; docs/algorithms.md §1):
//   T = t0 * max(n ** (theta / H), min_scale),   l' = l / T.
// edt_temperature returns T per row. apply_edt_ is the fused sampler step: a thread reads
// each of its rows once for the softmax stats (row_stats.h) and divides the row before it by
// its T in the same loop, while that row is still in cache (L2 holds a 152k-token row); the
// division (the divider, or on AVX-512 its exact reciprocal form, row_stats.h) then works
// beside the exp polynomial instead of after it. At batch below the thread
// count, each row's segments are spread over the threads instead, then merged.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "row_kernels.h"
#include "row_stats.h"

namespace real_vllm {
namespace {

// Same cases, same order, as reference.edt_temperature. The power is taken in double: T is
// very sensitive to H when theta / H is large, so only H should carry float rounding.
float edt_temperature_of(float h, float t0, float n, float theta, double min_scale) {
  if (theta == 0.0f) return t0;    // exactly t0, also where theta / H = 0 / 0 (and H unread)
  if (std::isnan(h)) return kNaN;  // keep a broken row visible downstream
  // H = +0 (one finite logit) gives theta / H = +inf and n ** inf = 0: T = t0 * min_scale.
  const double scale = std::pow(double(n), double(theta) / double(h));
  return static_cast<float>(double(t0) * (scale < min_scale ? min_scale : scale));
}

// One segment's stats (row_stats.h), compiled for the running CPU's vector width.
REAL_VLLM_ROW_KERNEL SoftmaxStats stats_of_segment(const float* segment, int64_t n) {
  return segment_stats<false>(segment, n, nullptr, 1.0f);
}

// A row's stats (softmax_stats), compiled for the running CPU's vector width.
REAL_VLLM_ROW_KERNEL SoftmaxStats softmax_stats_of(const float* row, int64_t n) {
  return softmax_stats(row, n);
}

// A row's stats (the same segments, merged in the same order as softmax_stats), dividing
// `divide_row` by t in place in the same loops.
REAL_VLLM_ROW_KERNEL SoftmaxStats stats_dividing(const float* row, int64_t n, float* divide_row,
                                                 float t) {
  SoftmaxStats st;
  for (int64_t s0 = 0; s0 < n; s0 += kStatsSegment) {
    const int64_t len = std::min(kStatsSegment, n - s0);
    merge_stats(st, segment_stats<true>(row + s0, len, divide_row + s0, t));
  }
  return st;
}

// Pointers to the checked per-row parameters.
struct EdtParams {
  const float* t0;
  const float* n;
  const float* theta;
  double min_scale;

  // theta = 0 needs no entropy: rows of requests that do not run EDT carry t0 = 1,
  // theta = 0 and so cost neither pass.
  bool needs_stats(int64_t r) const { return theta[r] != 0.0f; }

  float temperature(int64_t r, const SoftmaxStats& st) const {
    return edt_temperature_of(entropy_nats(st), t0[r], n[r], theta[r], min_scale);
  }
};

EdtParams checked_params(const at::Tensor& logits, const at::Tensor& t0, const at::Tensor& n,
                         const at::Tensor& theta, double min_scale, const char* op) {
  check_logits(logits, op);
  check_row_param(t0, "t0", logits, op);
  check_row_param(n, "n", logits, op);
  check_row_param(theta, "theta", logits, op);
  return {t0.const_data_ptr<float>(), n.const_data_ptr<float>(), theta.const_data_ptr<float>(),
          min_scale};
}

// Fewer rows than threads: one work item per (row, segment), so a lone row's stats pass runs
// on every thread. The segments' stats are merged in row order, as softmax_stats does, so T
// is bit-identical to the row-per-thread path. With `scaled` (the same memory as x, writable),
// the rows are then divided by their T, in equal spans over the threads.
bool split_rows_across_threads(int64_t batch, int64_t vocab) {
  return batch < at::get_num_threads() && vocab > kStatsSegment && !at::in_parallel_region();
}

void edt_split_rows(const EdtParams& params, const float* x, float* scaled, int64_t batch,
                    int64_t vocab, float* t) {
  const int64_t segments = (vocab + kStatsSegment - 1) / kStatsSegment;
  std::vector<SoftmaxStats> parts(batch * segments);
  at::parallel_for(0, batch * segments, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / segments, s0 = (i % segments) * kStatsSegment;
      if (params.needs_stats(r)) {
        parts[i] = stats_of_segment(x + r * vocab + s0, std::min(kStatsSegment, vocab - s0));
      }
    }
  });
  for (int64_t r = 0; r < batch; ++r) {
    SoftmaxStats st;
    for (int64_t s = 0; s < segments && st.finite; ++s) merge_stats(st, parts[r * segments + s]);
    t[r] = params.temperature(r, st);
  }
  if (scaled == nullptr) return;
  // The division has no order to keep: the batch's entries are cut into equal spans, one a
  // thread, where the segments (3 of 16,384 for a 49,152-token row) would leave one thread
  // with twice the other's share.
  at::parallel_for(0, batch * vocab, kStatsSegment / 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t r = i / vocab, span_end = std::min(end, (r + 1) * vocab);
      if (t[r] != 1.0f) temperature_row(scaled + i, span_end - i, t[r]);
      i = span_end;
    }
  });
}

at::Tensor edt_temperature(const at::Tensor& logits, const at::Tensor& t0, const at::Tensor& n,
                           const at::Tensor& theta, double min_scale) {
  const EdtParams params =
      checked_params(logits, t0, n, theta, min_scale, "real_vllm::edt_temperature");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  at::Tensor out = at::empty({batch}, logits.options());
  const float* x = logits.const_data_ptr<float>();
  float* t = out.mutable_data_ptr<float>();
  if (split_rows_across_threads(batch, vocab)) {
    edt_split_rows(params, x, /*scaled=*/nullptr, batch, vocab, t);
    return out;
  }
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      t[r] = params.needs_stats(r) ? params.temperature(r, softmax_stats_of(x + r * vocab, vocab))
                                   : params.t0[r];
    }
  });
  return out;
}

at::Tensor apply_edt_(at::Tensor& logits, const at::Tensor& t0, const at::Tensor& n,
                      const at::Tensor& theta, double min_scale) {
  const EdtParams params = checked_params(logits, t0, n, theta, min_scale, "real_vllm::apply_edt_");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  at::Tensor out = at::empty({batch}, logits.options());
  float* x = logits.mutable_data_ptr<float>();
  float* t = out.mutable_data_ptr<float>();
  if (split_rows_across_threads(batch, vocab)) {
    edt_split_rows(params, x, x, batch, vocab, t);
    return out;
  }
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    // The row whose T is known and which is not divided yet: it is divided while the next
    // row's stats are read.
    float* pending = nullptr;
    float pending_t = 1.0f;
    for (int64_t r = begin; r < end; ++r) {
      float* row = x + r * vocab;
      if (params.needs_stats(r)) {
        const SoftmaxStats st = pending != nullptr ? stats_dividing(row, vocab, pending, pending_t)
                                                   : softmax_stats_of(row, vocab);
        t[r] = params.temperature(r, st);
      } else {
        if (pending != nullptr && pending_t != 1.0f) temperature_row(pending, vocab, pending_t);
        t[r] = params.t0[r];
      }
      pending = row;
      pending_t = t[r];
    }
    // x / 1 == x: skip the pass.
    if (pending != nullptr && pending_t != 1.0f) temperature_row(pending, vocab, pending_t);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) {
  m.impl("edt_temperature", &edt_temperature);
  m.impl("apply_edt_", &apply_edt_);
}

}  // namespace real_vllm
