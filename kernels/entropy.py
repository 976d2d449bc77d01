"""Entropy of softmax(l) per row, in nats (EDT, arXiv 2403.14541).

One program per row, one read of the row (online max / normaliser / entropy statistics,
see row_stats). Rows with a NaN or +inf give NaN; all -inf rows give 0.
"""

import torch
import triton
import triton.language as tl

from .row_stats import row_entropy, row_stats, stats_block


@triton.jit
def _entropy_kernel(x_ptr, out_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    _, z, s, _, bad = row_stats(x_ptr + row * V, V, BLOCK, "evict_first")
    tl.store(out_ptr + row, row_entropy(z, s, bad))


def entropy(x: torch.Tensor) -> torch.Tensor:
    """x: contiguous float32 [B, V] -> [B] float32."""
    batch, vocab = x.shape
    out = torch.empty(batch, dtype=torch.float32, device=x.device)
    if batch:
        _entropy_kernel[(batch,)](x, out, vocab, BLOCK=stats_block(vocab), num_warps=8)
    return out
