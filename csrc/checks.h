// Argument checks shared by the ops. ops.py already normalises its inputs; these guard direct
// torch.ops.real_vllm.* callers, whose mistakes would otherwise read out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace real_vllm {

inline void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.device().is_cpu(), op, ": logits must be a CPU tensor, got ", logits.device());
  TORCH_CHECK(logits.scalar_type() == at::kFloat, op, ": logits must be float32, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [batch, vocab], got shape ",
              logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), op, ": logits must be contiguous");
}

// A per-row parameter: contiguous float32 [batch] on the logits' device.
inline void check_row_param(const at::Tensor& param, const char* name, const at::Tensor& logits,
                            const char* op) {
  TORCH_CHECK(param.device() == logits.device(), op, ": ", name,
              " must be on the logits' device (", logits.device(), "), got ", param.device());
  TORCH_CHECK(param.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              param.scalar_type());
  TORCH_CHECK(param.dim() == 1 && param.size(0) == logits.size(0), op, ": ", name,
              " must have shape [", logits.size(0), "] (one per logits row), got ", param.sizes());
  TORCH_CHECK(param.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace real_vllm
