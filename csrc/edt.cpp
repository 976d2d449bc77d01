// EDT, entropy-based dynamic temperature (arXiv 2403.14541; docs/algorithms.md §1):
//   T = t0 * max(n ** (theta / H), min_scale),   l' = l / T.
// edt_temperature returns T per row. apply_edt_ is the fused sampler step: per row, the
// entropy kernel reads the row once, then the temperature kernel divides it by T while it
// is still in cache (L2 holds a 152k-token row), and T is returned.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

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

// Pointers to the checked per-row parameters.
struct EdtParams {
  const float* t0;
  const float* n;
  const float* theta;
  double min_scale;

  // theta = 0 needs no entropy: rows of requests that do not run EDT carry t0 = 1,
  // theta = 0 and so cost neither pass (see apply_edt_).
  float temperature(int64_t r, const float* row, int64_t vocab) const {
    const float h = theta[r] == 0.0f ? 0.0f : entropy_row(row, vocab);
    return edt_temperature_of(h, t0[r], n[r], theta[r], min_scale);
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

at::Tensor edt_temperature(const at::Tensor& logits, const at::Tensor& t0, const at::Tensor& n,
                           const at::Tensor& theta, double min_scale) {
  const EdtParams params =
      checked_params(logits, t0, n, theta, min_scale, "real_vllm::edt_temperature");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  at::Tensor out = at::empty({batch}, logits.options());
  const float* x = logits.const_data_ptr<float>();
  float* t = out.mutable_data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      t[r] = params.temperature(r, x + r * vocab, vocab);
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
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = x + r * vocab;
      t[r] = params.temperature(r, row, vocab);
      if (t[r] != 1.0f) temperature_row(row, vocab, t[r]);  // x / 1 == x: skip the pass
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) {
  m.impl("edt_temperature", &edt_temperature);
  m.impl("apply_edt_", &apply_edt_);
}

}  // namespace real_vllm
