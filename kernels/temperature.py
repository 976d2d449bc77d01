"""Plain temperature in place: l / T per row, a true (correctly rounded) float32 division.

Bit-identical to torch's ``x / t[:, None]`` (vLLM's own temperature step). One read and one
write of the row, spread over a [B, V / BLOCK] grid so small batches still fill the GPU.
"""

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _apply_temperature_kernel(x_ptr, t_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < V
    ptr = x_ptr + row * V + idx
    x = tl.load(ptr, mask=mask, other=0.0)
    # div_rn: `/` may lower to an approximate division on GPUs.
    tl.store(ptr, tl.math.div_rn(x, tl.load(t_ptr + row)), mask=mask)


def apply_temperature_(x: torch.Tensor, t: torch.Tensor) -> None:
    """x: contiguous float32 [B, V], divided in place by t: contiguous float32 [B]."""
    batch, vocab = x.shape
    if batch:
        block = min(BLOCK, triton.next_power_of_2(vocab))
        _apply_temperature_kernel[(batch, triton.cdiv(vocab, block))](x, t, vocab, BLOCK=block, num_warps=8)
