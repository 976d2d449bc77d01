"""EDT, entropy-based dynamic temperature (arXiv 2403.14541; docs/algorithms.md §1):
T = t0 * max(n ** (theta / H), min_scale).

``edt_temperature``: one program per row, one read (the row statistics of row_stats).
``apply_edt_``: one fused kernel, one program per row: the stats pass (one read), then the
scaling pass l / T in place (one read, mostly from L2, and one write). The division is the
correctly rounded one, bit-identical to torch's ``x / t[:, None]``, so theta = 0 reproduces
plain temperature t0 token for token.
"""

import torch
import triton
import triton.language as tl

from .row_stats import row_entropy, row_stats, stats_block


@triton.jit
def _temperature(h, t0, n, theta, min_scale):
    # n ** r as exp2(r * log2 n); n == 1 is pow's 1 ** anything = 1 (r may be inf where H = 0).
    scale = tl.where(n == 1.0, 1.0, tl.exp2((theta / h) * tl.log2(n)))
    scale = tl.where(scale < min_scale, min_scale, scale)  # a clamp that keeps NaN
    scale = tl.where(h != h, float("nan"), scale)
    scale = tl.where(theta == 0.0, 1.0, scale)  # exactly t0, even where theta / H = 0 / 0
    return t0 * scale


@triton.jit
def _row_temperature(x_ptr, t0_ptr, n_ptr, theta_ptr, row, V, min_scale, BLOCK: tl.constexpr,
                     EVICT: tl.constexpr):
    t0 = tl.load(t0_ptr + row)
    theta = tl.load(theta_ptr + row)
    # theta = 0 needs no entropy: rows of requests that do not run EDT carry t0 = 1,
    # theta = 0 and so cost neither pass.
    t = t0
    if theta != 0.0:
        _, z, s, _, bad = row_stats(x_ptr + row * V, V, BLOCK, EVICT)
        t = _temperature(row_entropy(z, s, bad), t0, tl.load(n_ptr + row), theta, min_scale)
    return t


@triton.jit
def _edt_temperature_kernel(x_ptr, t0_ptr, n_ptr, theta_ptr, t_ptr, V, min_scale, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = _row_temperature(x_ptr, t0_ptr, n_ptr, theta_ptr, row, V, min_scale, BLOCK, "evict_first")
    tl.store(t_ptr + row, t)


@triton.jit
def _apply_edt_kernel(x_ptr, t0_ptr, n_ptr, theta_ptr, t_ptr, V, min_scale, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    # Keep the row in L2 for the scaling pass that follows.
    t = _row_temperature(x_ptr, t0_ptr, n_ptr, theta_ptr, row, V, min_scale, BLOCK, "evict_last")
    tl.store(t_ptr + row, t)
    if t != 1.0:  # x / 1 == x: skip the pass
        row_ptr = x_ptr + row * V
        offs = tl.arange(0, BLOCK)
        for start in range(0, V, BLOCK):
            idx = start + offs
            mask = idx < V
            x = tl.load(row_ptr + idx, mask=mask, other=0.0, eviction_policy="evict_first")
            # div_rn: `/` may lower to an approximate division on GPUs.
            tl.store(row_ptr + idx, tl.math.div_rn(x, t), mask=mask)


def edt_temperature(x, t0, n, theta, min_scale: float) -> torch.Tensor:
    """x: contiguous float32 [B, V]; t0, n, theta: contiguous float32 [B] -> T [B]."""
    batch, vocab = x.shape
    t = torch.empty(batch, dtype=torch.float32, device=x.device)
    if batch:
        _edt_temperature_kernel[(batch,)](x, t0, n, theta, t, vocab, float(min_scale),
                                          BLOCK=stats_block(vocab), num_warps=8)
    return t


def apply_edt_(x, t0, n, theta, min_scale: float) -> torch.Tensor:
    """Scale x in place by its EDT temperature; returns T [B]."""
    batch, vocab = x.shape
    t = torch.empty(batch, dtype=torch.float32, device=x.device)
    if batch:
        _apply_edt_kernel[(batch,)](x, t0, n, theta, t, vocab, float(min_scale),
                                    BLOCK=stats_block(vocab), num_warps=8)
    return t
