// entropy(logits) -> [B]: H(softmax(l)) in nats per row, one read of each row.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"
#include "row_kernels.h"
#include "row_stats.h"

namespace real_vllm {

REAL_VLLM_ROW_KERNEL float entropy_row(const float* row, int64_t vocab) {
  return entropy_nats(softmax_stats(row, vocab));
}

namespace {

at::Tensor entropy(const at::Tensor& logits) {
  check_logits(logits, "real_vllm::entropy");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  at::Tensor out = at::empty({batch}, logits.options());
  const float* x = logits.const_data_ptr<float>();
  float* h = out.mutable_data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) h[r] = entropy_row(x + r * vocab, vocab);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) { m.impl("entropy", &entropy); }

}  // namespace real_vllm
