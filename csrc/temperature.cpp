// apply_temperature_(logits, temperature): logits[r] /= temperature[r], in place.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "row_kernels.h"
#include "row_stats.h"

namespace real_vllm {

// A true float32 division, never a plain row * (1 / t): the result is then bit-identical to
// torch's `x / t[:, None]`, vLLM's own temperature step, so EDT with theta = 0 samples exactly
// the tokens plain temperature t0 would. On AVX-512 the division is the reciprocal one with
// its exact correction (divide_lanes, row_stats.h), the same bits in a third of the time.
REAL_VLLM_ROW_KERNEL void temperature_row(float* row, int64_t vocab, float t) {
#ifdef REAL_VLLM_AVX512_STATS
  if (cpu_has_avx512()) return divide_row_avx512(row, vocab, t);
#endif
#pragma omp simd
  for (int64_t i = 0; i < vocab; ++i) row[i] = row[i] / t;
}

namespace {

void apply_temperature_(at::Tensor& logits, const at::Tensor& temperature) {
  constexpr const char* kOp = "real_vllm::apply_temperature_";
  check_logits(logits, kOp);
  check_row_param(temperature, "temperature", logits, kOp);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  float* x = logits.mutable_data_ptr<float>();
  const float* t = temperature.const_data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) temperature_row(x + r * vocab, vocab, t[r]);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) { m.impl("apply_temperature_", &apply_temperature_); }

}  // namespace real_vllm
