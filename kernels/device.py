"""What the kernels are compiled for: the Triton interpreter (CPU tensors, TRITON_INTERPRET=1)
or a GPU target, asked of Triton's active driver rather than of torch, so that a compile-only
driver (benchmarks/gpu_compile.py: no GPU, nothing launched) gets the same launch choices as a
real device."""

import functools
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
    return _multiprocessors(triton.runtime.driver.active, triton.runtime.driver.active.get_current_device())


@functools.cache
def _multiprocessors(driver, device: int) -> int:
    # Once per (driver, device): the launchers ask every step.
    return driver.utils.get_device_properties(device)["multiprocessor_count"]
