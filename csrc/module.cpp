// The Python module real_vllm._C is empty: importing it loads this library, whose
// TORCH_LIBRARY block declares the op schemas and whose op files (entropy.cpp, edt.cpp,
// temperature.cpp, top_p.cpp, sled.cpp, thf_sliding.cpp) register the CPU kernels as torch.ops.real_vllm.*.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}

TORCH_LIBRARY(real_vllm, m) {
  m.def("entropy(Tensor logits) -> Tensor");
  m.def("edt_temperature(Tensor logits, Tensor t0, Tensor n, Tensor theta, float min_scale)"
        " -> Tensor");
  m.def("apply_temperature_(Tensor(a!) logits, Tensor temperature) -> ()");
  m.def("apply_edt_(Tensor(a!) logits, Tensor t0, Tensor n, Tensor theta, float min_scale)"
        " -> Tensor");
  m.def("top_p_mask_(Tensor(a!) logits, Tensor top_p) -> ()");
  m.def("sled_top_k_(Tensor logits, Tensor k, Tensor(a!) candidates, Tensor(b!) count) -> ()");
  m.def("sled_stats_(Tensor logits, Tensor chunk, int offset, Tensor candidates, Tensor(a!) stats,"
        " Tensor(b!) candidate_logits) -> ()");
  m.def("sled_finish_(Tensor(a!) logits, Tensor stats, Tensor candidates, Tensor count,"
        " Tensor candidate_logits, Tensor alpha, Tensor lower_bound) -> ()");
  m.def("thf_sliding_step(Tensor[] layers, Tensor embed_lookup, Tensor? embed_proj, Tensor final_norm,"
        " Tensor head_weight, Tensor head_bias, Tensor(a!) keys, Tensor(b!) values, Tensor(c!) newest,"
        " Tensor slots, Tensor tokens, Tensor positions, Tensor real, Tensor base, Tensor commit_end,"
        " Tensor inv_freq, float rope_scale, float eps, float scaling, int heads) -> Tensor");
}
