// One decode step of a sliding-window THF served from its per-request key/value cache (REAL,
// arXiv 2406.07735; docs/algorithms.md §2.2): the C++ twin of SlidingKVCache.step
// (real_vllm/thf/incremental.py), which documents the arguments and the cache layout; the two
// agree to float32 rounding (tests/test_thf.py). A decode step of the shipped THF is a token a
// row through two tiny layers: in torch ~100 small ops, each costing microseconds of dispatch
// and allocation before any arithmetic. Here the projections are ATen GEMMs (4 a layer) and
// everything else (norms, RoPE, attention straight from the rings over at most window + T
// keys, SiLU, residuals, ring writes) plain loops. Llama layers without biases, SiLU MLP
// (SlidingKVCache checks before it calls this); float32 on one thread.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace real_vllm {
namespace {

constexpr int64_t kWeightsPerLayer = 6;  // input norm, qkv, o, post-attention norm, gate|up, down

// x [n, h] -> out [n, h]: Llama's RMSNorm, x * rsqrt(mean(x^2) + eps) * weight.
void rms_norm_rows(const float* x, const float* weight, float* out, int64_t n, int64_t h, float eps) {
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * h;
    float sum = 0.0f;
    for (int64_t j = 0; j < h; ++j) sum += row[j] * row[j];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
    for (int64_t j = 0; j < h; ++j) out[i * h + j] = row[j] * inv * weight[j];
  }
}

// Llama's rotate-half RoPE on one head's vector, in place.
void rotate(float* t, const float* cos, const float* sin, int64_t half) {
  for (int64_t j = 0; j < half; ++j) {
    const float a = t[j], b = t[j + half];
    t[j] = a * cos[j] - b * sin[j];
    t[j + half] = b * cos[j] + a * sin[j];
  }
}

void check_weight(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "thf_sliding_step: ", name,
              " must be a contiguous float32 CPU tensor");
}

at::Tensor thf_sliding_step(at::TensorList layers, const at::Tensor& embed_lookup,
                            const c10::optional<at::Tensor>& embed_proj, const at::Tensor& final_norm,
                            const at::Tensor& head_weight, const at::Tensor& head_bias, const at::Tensor& keys,
                            const at::Tensor& values, const at::Tensor& newest, const at::Tensor& slots,
                            const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& real,
                            const at::Tensor& base, const at::Tensor& commit_end, const at::Tensor& inv_freq,
                            double rope_scale, double eps, double scaling, int64_t heads) {
  TORCH_CHECK(layers.size() % kWeightsPerLayer == 0, "thf_sliding_step: ", kWeightsPerLayer,
              " weights per layer expected, got ", layers.size());
  const int64_t num_layers = static_cast<int64_t>(layers.size()) / kWeightsPerLayer;
  TORCH_CHECK(keys.dim() == 5 && keys.size(0) == num_layers && keys.sizes() == values.sizes(),
              "thf_sliding_step: keys and values must be [layers, slots + 1, window, kv_heads, head_dim]");
  check_weight(keys, "keys");
  check_weight(values, "values");
  for (const at::Tensor& w : layers) check_weight(w, "a layer weight");
  for (const at::Tensor* w : {&embed_lookup, &final_norm, &head_weight, &head_bias}) check_weight(*w, "a weight");
  if (embed_proj.has_value()) check_weight(*embed_proj, "embed_proj");
  const int64_t rows = tokens.size(0), length = tokens.size(1), n = rows * length;
  const int64_t slots_held = keys.size(1), trash = slots_held - 1, width = keys.size(2);
  const int64_t kv_heads = keys.size(3), dim = keys.size(4), half = dim / 2;
  const int64_t hidden = final_norm.numel(), outputs = head_bias.numel();
  TORCH_CHECK(heads % kv_heads == 0, "thf_sliding_step: heads must be a multiple of kv_heads");
  const int64_t groups = heads / kv_heads, qkv_width = (heads + 2 * kv_heads) * dim;
  for (const at::Tensor* t : {&slots, &tokens, &positions, &base, &commit_end, &newest})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), "thf_sliding_step: int64 contiguous indices expected");
  TORCH_CHECK(real.scalar_type() == at::kBool && real.is_contiguous(), "thf_sliding_step: real must be bool");
  TORCH_CHECK(positions.sizes() == tokens.sizes() && real.sizes() == tokens.sizes() && slots.numel() == rows &&
                  base.numel() == rows && commit_end.numel() == rows && newest.numel() == trash,
              "thf_sliding_step: inconsistent row shapes");
  TORCH_CHECK(inv_freq.scalar_type() == at::kDouble && inv_freq.numel() == half && inv_freq.is_contiguous(),
              "thf_sliding_step: inv_freq must be float64 [head_dim / 2]");

  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* token = tokens.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const bool* is_real = real.data_ptr<bool>();
  const int64_t* base_of = base.data_ptr<int64_t>();
  const int64_t* commit_of = commit_end.data_ptr<int64_t>();
  const int64_t vocab = embed_lookup.size(0);
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(slot[r] >= 0 && slot[r] < trash, "thf_sliding_step: slot ", slot[r], " out of range");
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(token[i] >= 0 && token[i] < vocab, "thf_sliding_step: token ", token[i], " out of range");

  // The embedding: a lookup, then (factorised) its projection.
  const int64_t lookup_width = embed_lookup.size(1);
  at::Tensor x = at::empty({n, lookup_width}, keys.options());
  for (int64_t i = 0; i < n; ++i)
    std::copy_n(embed_lookup.data_ptr<float>() + token[i] * lookup_width, lookup_width, x.data_ptr<float>() + i * lookup_width);
  if (embed_proj.has_value()) x = at::linear(x, *embed_proj);
  TORCH_CHECK(x.size(1) == hidden, "thf_sliding_step: the embedding's width is not the hidden size");
  float* xs = x.data_ptr<float>();

  // RoPE tables per column: angles in float64 (see model.rope), then scaled and rounded to float32.
  std::vector<float> cos(n * half), sin(n * half);
  const double* freq = inv_freq.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < half; ++j) {
      const double angle = static_cast<double>(pos[i]) * freq[j];
      cos[i * half + j] = static_cast<float>(std::cos(angle) * rope_scale);
      sin[i * half + j] = static_cast<float>(std::sin(angle) * rope_scale);
    }
  }

  // Each column's ring entry when committed, else the trash slot's (written, never read).
  std::vector<int64_t> target(n);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < length; ++t) {
      const int64_t i = r * length + t, p = pos[i], end = commit_of[r];
      const bool commit = is_real[i] && p <= end && p > end - width;
      target[i] = (commit ? slot[r] : trash) * width + ((p % width) + width) % width;
    }
  }

  at::Tensor normed = at::empty({n, hidden}, keys.options());
  at::Tensor attended = at::empty({n, heads * dim}, keys.options());
  float* hs = normed.data_ptr<float>();
  float* att = attended.data_ptr<float>();
  std::vector<float> weights(width + length);
  const int64_t ring_stride = kv_heads * dim;  // one ring entry
  const float scale = static_cast<float>(scaling);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const at::Tensor* wt = &layers[layer * kWeightsPerLayer];
    rms_norm_rows(xs, wt[0].data_ptr<float>(), hs, n, hidden, static_cast<float>(eps));
    at::Tensor projected = at::linear(normed, wt[1]).contiguous();  // [n, (heads + 2 kv) * D]
    TORCH_CHECK(projected.size(1) == qkv_width, "thf_sliding_step: the qkv weight's rows do not match the heads");
    float* qkv = projected.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t hh = 0; hh < heads + kv_heads; ++hh) rotate(qkv + i * qkv_width + hh * dim, &cos[i * half], &sin[i * half], half);
    float* ring_keys = keys[layer].data_ptr<float>();
    float* ring_values = values[layer].data_ptr<float>();
    // Attention: a query at position p sees the cached keys of positions p - window + 1 .. base
    // (ring entry e holds base - ((base - e) mod window)) and the step's own real columns within
    // the window behind it; a padding query sees itself only (its output is never read).
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t held_base = base_of[r];
      const float* cached_keys = ring_keys + slot[r] * width * ring_stride;
      const float* cached_values = ring_values + slot[r] * width * ring_stride;
      for (int64_t t = 0; t < length; ++t) {
        const int64_t i = r * length + t, p = pos[i];
        for (int64_t hh = 0; hh < heads; ++hh) {
          const int64_t kvh = hh / groups;
          const float* q = qkv + i * qkv_width + hh * dim;
          float top = neg_inf;
          for (int64_t e = 0; e < width + length; ++e) {
            const float* k = nullptr;
            if (e < width) {
              const int64_t held = held_base - (((held_base - e) % width) + width) % width;
              if (held_base >= 0 && held >= 0 && p - held < width) k = cached_keys + e * ring_stride + kvh * dim;
            } else {
              const int64_t c = e - width, behind = p - pos[r * length + c];
              if ((behind >= 0 && behind < width && is_real[r * length + c]) || c == t)
                k = qkv + (r * length + c) * qkv_width + (heads + kvh) * dim;
            }
            float score = neg_inf;
            if (k != nullptr) {
              float dot = 0.0f;
              for (int64_t d = 0; d < dim; ++d) dot += q[d] * k[d];
              score = dot * scale;
            }
            weights[e] = score;
            top = std::max(top, score);
          }
          float total = 0.0f;
          for (int64_t e = 0; e < width + length; ++e) {
            weights[e] = weights[e] == neg_inf ? 0.0f : std::exp(weights[e] - top);
            total += weights[e];
          }
          float* out = att + i * heads * dim + hh * dim;
          std::fill_n(out, dim, 0.0f);
          for (int64_t e = 0; e < width + length; ++e) {
            if (weights[e] == 0.0f) continue;
            const float* v = e < width ? cached_values + e * ring_stride + kvh * dim
                                       : qkv + (r * length + e - width) * qkv_width + (heads + kv_heads + kvh) * dim;
            const float share = weights[e] / total;
            for (int64_t d = 0; d < dim; ++d) out[d] += share * v[d];
          }
        }
      }
    }
    const at::Tensor attn_out = at::linear(attended, wt[2]);
    const float* ao = attn_out.data_ptr<float>();
    for (int64_t j = 0; j < n * hidden; ++j) xs[j] += ao[j];
    rms_norm_rows(xs, wt[3].data_ptr<float>(), hs, n, hidden, static_cast<float>(eps));
    at::Tensor gate_up = at::linear(normed, wt[4]).contiguous();  // [n, 2 I]: gate | up
    const int64_t inner = gate_up.size(1) / 2;
    at::Tensor activated = at::empty({n, inner}, keys.options());
    const float* gu = gate_up.data_ptr<float>();
    float* act = activated.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < inner; ++j) {
        const float g = gu[i * 2 * inner + j];
        act[i * inner + j] = g / (1.0f + std::exp(-g)) * gu[i * 2 * inner + inner + j];
      }
    const at::Tensor mlp_out = at::linear(activated, wt[5]);
    const float* mo = mlp_out.data_ptr<float>();
    for (int64_t j = 0; j < n * hidden; ++j) xs[j] += mo[j];
    // After every row's attention of this layer: each row read the cache as it was.
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(qkv + i * qkv_width + heads * dim, ring_stride, ring_keys + target[i] * ring_stride);
      std::copy_n(qkv + i * qkv_width + (heads + kv_heads) * dim, ring_stride, ring_values + target[i] * ring_stride);
    }
  }
  // The committing row of a slot (at most one) makes its commit_end the slot's newest position.
  int64_t* newest_of = newest.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    if (commit_of[r] >= 0) newest_of[slot[r]] = commit_of[r];
  rms_norm_rows(xs, final_norm.data_ptr<float>(), hs, n, hidden, static_cast<float>(eps));
  TORCH_CHECK(head_weight.size(0) == outputs, "thf_sliding_step: head weight and bias disagree");
  return at::linear(normed, head_weight, head_bias).exp_().view({rows, length, outputs});
}

}  // namespace

TORCH_LIBRARY_IMPL(real_vllm, CPU, m) { m.impl("thf_sliding_step", &thf_sliding_step); }

}  // namespace real_vllm
