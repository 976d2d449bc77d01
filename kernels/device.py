"""What the kernels are compiled for: the Triton interpreter (CPU tensors, TRITON_INTERPRET=1)
or a GPU target, asked of Triton's active driver rather than of torch, so that a compile-only
driver (benchmarks/gpu_compile.py: no GPU, nothing launched) gets the same launch choices as a
real device."""

import os

import triton


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def gpu_arch() -> int:
    """The compute capability Triton compiles for, e.g. 80, 90, 100 (0 under the interpreter)."""
    if interpreted():
        return 0
    return triton.runtime.driver.active.get_current_target().arch


def multiprocessors() -> int:
    """Streaming multiprocessors of the current device (1 under the interpreter)."""
    if interpreted():
        return 1
    active = triton.runtime.driver.active
    return active.utils.get_device_properties(active.get_current_device())["multiprocessor_count"]
