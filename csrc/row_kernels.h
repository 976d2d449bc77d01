// Row kernels shared between ops: each is defined (and multiversioned) in its op's file
// (apply_edt_ uses the temperature kernel; its stats pass is its own, csrc/edt.cpp).
#pragma once

#include <cstdint>

namespace real_vllm {

// H(softmax(row)) in nats with the non-finite-row policy of entropy_nats. entropy.cpp.
float entropy_row(const float* row, int64_t vocab);

// row / t in place, as true float32 divisions. temperature.cpp.
void temperature_row(float* row, int64_t vocab, float t);

}  // namespace real_vllm
