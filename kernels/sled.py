"""SLED, Self Logits Evolution Decoding (Zhang et al., arXiv 2411.02433), streamed over the vocabulary.

The per-(layer, row) stats m, z, a, s, dd and the cosines from them are docs/algorithms.md §4.2.

``sled_stats_``: one program per (layer, row), one read of a chunk of early logits
[L, B, C] (columns offset..offset + C - 1), merged into the running stats [5, L, B] as an
online softmax. Each of the BLOCK lanes keeps its own (m, z, a, s) with one exp per element
(§4.2's element rule), merged across lanes and into the stats at the end. The same program
copies l_n at the candidates that fall inside the chunk.

``sled_finish_``: one program per row: logZ of l_N (row_stats), the L * k cosine weights and
the evolved candidate values in float64 (as the C++ backend: s/z^2 - 2 p + 1 cancels where
p_n(i) nears 1) into a scratch row, then the row is overwritten (finite -> lower_bound, -inf
stays) and the new candidate values are scattered in. Rows with count 0 (NaN, +inf, nothing
finite) are untouched (§7).
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .device import gpu_arch, interpreted, multiprocessors
from .row_stats import row_stats, stats_block

CANDIDATE_BLOCK = 1024  # candidates per step of a candidate loop


@triton.jit
def _sled_stats_kernel(x_ptr, chunk_ptr, cand_ptr, stats_ptr, cl_ptr, B, V, C, K, offset,
                       BLOCK: tl.constexpr, KBLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # = layer * B + row: the row of chunk, stats, cl
    row = pid % B
    LB = tl.num_programs(0).to(tl.int64)
    e_ptr = chunk_ptr + pid * C
    f_ptr = x_ptr + row * V + offset
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK], tl.float32)
    a = tl.zeros([BLOCK], tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    dd = tl.zeros([BLOCK], tl.float32)
    for start in range(0, C, BLOCK):
        idx = start + offs
        inside = idx < C
        e = tl.load(e_ptr + idx, mask=inside, other=float("-inf"), eviction_policy="evict_first")
        f = tl.load(f_ptr + idx, mask=inside, other=float("-inf"))
        fin = f > float("-inf")
        diff = tl.where(fin, e - f, 0.0)
        dd += tl.where(inside & fin, diff * diff, 0.0)
        valid = e > float("-inf")  # -inf early logits weigh nothing in the softmax sums
        d = e - m
        up = d > 0  # also the first entry of a lane (m = -inf, d = +inf)
        t = tl.exp(-tl.abs(d))
        z_new = tl.where(up, z * t + 1.0, z + t)
        a_new = tl.where(up, a * t + diff, a + t * diff)
        s_new = tl.where(up, s * (t * t) + 1.0, s + t * t)
        z = tl.where(valid, z_new, z)
        a = tl.where(valid, a_new, a)
        s = tl.where(valid, s_new, s)
        m = tl.where(valid & up, e, m)
    # Merge the lanes, then into the stats of the chunks before (m0 = -inf: none yet).
    m_chunk = tl.max(m, 0)
    m0 = tl.load(stats_ptr + pid)
    m_new = tl.maximum(m0, m_chunk)
    has = z > 0
    w = tl.where(has, tl.exp(m - m_new), 0.0)  # empty lanes: m = -inf, weigh 0 (no NaN)
    r0 = tl.where(m0 > float("-inf"), tl.exp(m0 - m_new), 0.0)  # m0 = -inf: z0 = a0 = s0 = 0
    z0 = tl.load(stats_ptr + LB + pid)
    a0 = tl.load(stats_ptr + 2 * LB + pid)
    s0 = tl.load(stats_ptr + 3 * LB + pid)
    dd0 = tl.load(stats_ptr + 4 * LB + pid)
    tl.store(stats_ptr + pid, m_new)
    tl.store(stats_ptr + LB + pid, z0 * r0 + tl.sum(w * z, 0))
    tl.store(stats_ptr + 2 * LB + pid, a0 * r0 + tl.sum(w * a, 0))
    tl.store(stats_ptr + 3 * LB + pid, s0 * (r0 * r0) + tl.sum(w * w * s, 0))
    tl.store(stats_ptr + 4 * LB + pid, dd0 + tl.sum(dd, 0))
    # l_n at the candidates inside this chunk.
    koffs = tl.arange(0, KBLOCK)
    for start in range(0, K, KBLOCK):
        j = start + koffs
        cand = tl.load(cand_ptr + row * K + j, mask=j < K, other=-1)
        hit = (j < K) & (cand >= offset) & (cand < offset + C)
        col = tl.where(hit, cand - offset, 0)
        tl.store(cl_ptr + pid * K + j, tl.load(e_ptr + col, mask=hit), mask=hit)


@triton.jit
def _candidate_weights(x_row_ptr, cand_ptr, stats_ptr, cl_ptr, row, B, K, L, j, live,
                       KBLOCK: tl.constexpr):
    """sum over layers of w_{n,j} for the candidates j (0 where not live), in float64: these
    are L * k scalars, and |p_n - e_i|^2 = s/z^2 - 2 p + 1 cancels where p_n(i) is near 1."""
    LB = L * B
    cand = tl.load(cand_ptr + row * K + j, mask=live, other=0)
    xi = tl.load(x_row_ptr + cand, mask=live, other=0.0)
    xi64 = xi.to(tl.float64)
    total = tl.zeros([KBLOCK], tl.float64)
    for layer in range(0, L):
        at = layer * B + row
        m = tl.load(stats_ptr + at).to(tl.float64)
        z = tl.load(stats_ptr + LB + at).to(tl.float64)
        a = tl.load(stats_ptr + 2 * LB + at).to(tl.float64)
        s = tl.load(stats_ptr + 3 * LB + at).to(tl.float64)
        dd = tl.load(stats_ptr + 4 * LB + at).to(tl.float64)
        cl = tl.load(cl_ptr + at * K + j, mask=live, other=0.0).to(tl.float64)
        p = tl.exp(cl - m) / z
        dot = a / z - (cl - xi64)
        g = s / (z * z) - 2.0 * p + 1.0
        denom = tl.sqrt(dd * g)  # NaN where rounding left g < 0: no vote, as denom = 0
        ok = denom > 0
        cos = tl.where(ok, dot / tl.where(ok, denom, 1.0), 0.0)
        cos = tl.maximum(cos, 0.0)
        total += tl.where(live, cos * cos, 0.0)
    return total, xi, cand


@triton.jit
def _sled_finish_kernel(x_ptr, stats_ptr, cand_ptr, count_ptr, cl_ptr, alpha_ptr, lb_ptr,
                        scratch_ptr, B, V, K, L, STATS_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
                        KBLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    count = tl.load(count_ptr + row)
    if count > 0:
        x_row_ptr = x_ptr + row * V
        # No name is re-bound to another type in a loop below (the compiler refuses that,
        # the interpreter does not): the unused outputs get names of their own.
        m, z, _s, _lo, _bad = row_stats(x_row_ptr, V, STATS_BLOCK, "evict_last")
        log_z = m.to(tl.float64) + tl.log(z.to(tl.float64))
        alpha = tl.load(alpha_ptr + row).to(tl.float64)
        koffs = tl.arange(0, KBLOCK)
        total = tl.zeros([], tl.float64)
        for start in range(0, count, KBLOCK):
            j = start + koffs
            w, _xi, _cand = _candidate_weights(x_row_ptr, cand_ptr, stats_ptr, cl_ptr, row, B, K, L, j,
                                               j < count, KBLOCK)
            total += tl.sum(w, 0)
        inv = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
        for start in range(0, count, KBLOCK):
            j = start + koffs
            live = j < count
            w, xi, _cand = _candidate_weights(x_row_ptr, cand_ptr, stats_ptr, cl_ptr, row, B, K, L, j, live,
                                              KBLOCK)
            p_final = tl.exp(xi.to(tl.float64) - log_z)
            new = (xi - alpha * (p_final - w * inv)).to(tl.float32)
            tl.store(scratch_ptr + row * K + j, new, mask=live)
        # Every read of the row is done (and the scratch written) before it is overwritten.
        tl.debug_barrier()
        lower_bound = tl.load(lb_ptr + row)
        offs = tl.arange(0, BLOCK)
        for start in range(0, V, BLOCK):
            idx = start + offs
            x = tl.load(x_row_ptr + idx, mask=idx < V, other=float("-inf"))
            tl.store(x_row_ptr + idx, tl.zeros([BLOCK], tl.float32) + lower_bound,
                     mask=x > float("-inf"))
        tl.debug_barrier()
        for start in range(0, count, KBLOCK):
            j = start + koffs
            live = j < count
            cand = tl.load(cand_ptr + row * K + j, mask=live, other=0)
            tl.store(x_row_ptr + cand, tl.load(scratch_ptr + row * K + j, mask=live), mask=live)


def _candidate_block(k: int) -> int:
    return min(CANDIDATE_BLOCK, triton.next_power_of_2(max(k, 1)))


def sled_stats_(x, chunk, offset: int, candidates, stats, candidate_logits) -> None:
    """Merge one chunk of early logits into the stats, in place.

    x: contiguous float32 [B, V] final logits (read only); chunk: contiguous float32 [L, B, C],
    the early logits of columns offset..offset + C - 1; candidates: contiguous int64 [B, K];
    stats: float32 [5, L, B] (m, z, a, s, dd; start at -inf, 0, 0, 0, 0);
    candidate_logits: float32 [L, B, K], written where a candidate lies in the chunk.
    """
    batch, vocab = x.shape
    layers, _, width = chunk.shape
    k = candidates.shape[1]
    if layers * batch:
        _sled_stats_kernel[(layers * batch,)](x, chunk, candidates, stats, candidate_logits, batch,
                                              vocab, width, k, int(offset),
                                              BLOCK=stats_block(max(width, 1)),
                                              KBLOCK=_candidate_block(k), num_warps=8)


def sled_finish_(x, stats, candidates, count, candidate_logits, alpha, lower_bound) -> None:
    """Evolve x in place from the merged stats: the count[b] first candidates of row b get
    l_N - alpha (softmax(l_N) - P_latent), its other finite entries lower_bound.

    count: int64 [B] (0 leaves the row untouched); alpha, lower_bound: float32 [B].
    """
    batch, vocab = x.shape
    layers = stats.shape[1]
    k = candidates.shape[1]
    if batch and k:
        scratch = torch.empty(batch, k, dtype=torch.float32, device=x.device)
        _sled_finish_kernel[(batch,)](x, stats, candidates, count, candidate_logits, alpha,
                                      lower_bound, scratch, batch, vocab, k, layers,
                                      STATS_BLOCK=stats_block(vocab),
                                      BLOCK=min(2048, triton.next_power_of_2(vocab)),
                                      KBLOCK=_candidate_block(k), num_warps=8)


# ------------------------------------------------------------------ projection fused with the stats

FUSED_MAX_K = 256  # candidates beyond this take the chunked path (their logits are gathered here)


@triton.jit
def _sled_hidden_stats_kernel(h_ptr, w_ptr, x_ptr, part_ptr, R, B, V, H, w_stride, span, scale,
                              BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """Early logits of BLOCK_R (layer, row) pairs over one vocabulary split, h W^T computed a
    [BLOCK_R, BLOCK_V] tile at a time and reduced at once (never written): per pair the split's
    m, z, a, s, dd as in _sled_stats_kernel, into part[split, stat, pair]."""
    pairs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # pair = layer * B + row
    split = tl.program_id(1)
    pair_ok = pairs < R
    rows = (pairs % B).to(tl.int64)
    v_lo = split * span
    v_hi = tl.minimum(v_lo + span, V)
    hk = tl.arange(0, BLOCK_H)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK_R], tl.float32)
    a = tl.zeros([BLOCK_R], tl.float32)
    s = tl.zeros([BLOCK_R], tl.float32)
    dd = tl.zeros([BLOCK_R], tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        vs = v0 + tl.arange(0, BLOCK_V)
        v_ok = vs < v_hi
        acc = tl.zeros([BLOCK_R, BLOCK_V], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + hk
            h_ok = hh < H
            ht = tl.load(h_ptr + pairs[:, None].to(tl.int64) * H + hh[None, :],
                         mask=pair_ok[:, None] & h_ok[None, :], other=0.0)
            wt = tl.load(w_ptr + vs[None, :].to(tl.int64) * w_stride + hh[:, None],
                         mask=v_ok[None, :] & h_ok[:, None], other=0.0)
            acc = tl.dot(ht, wt, acc, input_precision="ieee")  # no TF32: the cosines need fp32 logits
        e = tl.where(v_ok[None, :], acc * scale, float("-inf"))
        f = tl.load(x_ptr + rows[:, None] * V + vs[None, :], mask=pair_ok[:, None] & v_ok[None, :],
                    other=float("-inf"))
        diff = tl.where(f > float("-inf"), e - f, 0.0)  # masked final tokens stay out of a and dd
        dd += tl.sum(diff * diff, 1)
        new_m = tl.maximum(m, tl.max(e, 1))  # finite: every tile has a valid column
        r = tl.exp(m - new_m)  # 0 on the first tile (m = -inf)
        p = tl.exp(e - new_m[:, None])
        z = z * r + tl.sum(p, 1)
        a = a * r + tl.sum(diff * p, 1)
        s = s * (r * r) + tl.sum(p * p, 1)
        m = new_m
    out = part_ptr + split * 5 * R + pairs
    tl.store(out, m, mask=pair_ok)
    tl.store(out + R, z, mask=pair_ok)
    tl.store(out + 2 * R, a, mask=pair_ok)
    tl.store(out + 3 * R, s, mask=pair_ok)
    tl.store(out + 4 * R, dd, mask=pair_ok)


class Tiles(NamedTuple):
    """Launch shape of the fused kernel: tl.dot needs every block side >= 16."""

    rows: int  # BLOCK_R: (layer, row) pairs per program
    vocab: int  # BLOCK_V: vocabulary columns per tile
    hidden: int  # BLOCK_H: hidden units per tl.dot step
    num_warps: int
    num_stages: int  # software-pipelined loads of the h and W tiles


# Per (architecture, 16-bit weights): the largest tiles that compile with no register spills
# (make gpu-compile checks every target and serving shape: benchmarks/results/gpu_compile_*.csv).
# bf16/fp16 weights run on tensor cores (mma.sync on sm_80, wgmma on sm_90, tcgen05 on sm_100);
# float32 weights get FMA tiles (input_precision "ieee": TF32 would blur the cosines).
FUSED_TILES = {
    (80, True): Tiles(64, 64, 64, 8, 3),
    (80, False): Tiles(16, 64, 32, 4, 2),
    (90, True): Tiles(64, 64, 64, 8, 3),
    (90, False): Tiles(16, 64, 32, 4, 2),
}
INTERPRETER_TILES = Tiles(16, 64, 32, 4, 1)  # the interpreter (CPU) runs small tiles faster


def _fused_tiles(weight_dtype: torch.dtype) -> Tiles:
    if interpreted():
        return INTERPRETER_TILES
    half = weight_dtype in (torch.float16, torch.bfloat16)
    arch = max([a for a, _ in FUSED_TILES if a <= gpu_arch()] or [min(a for a, _ in FUSED_TILES)])
    return FUSED_TILES[(arch, half)]


def sled_hidden_stats_(x, hidden, weight, scale: float, candidates, stats, candidate_logits) -> bool:
    """The stats and candidate logits of sled_stats_ straight from the early hidden states:
    hidden [L, B, H] and lm_head's weight [>= V, H] (same dtype), the early logits
    scale * hidden W^T never stored. Returns False (nothing written) when the candidates are too
    many to gather here (K > FUSED_MAX_K): the caller then takes the chunked path.

    The vocabulary is split so that the grid fills the device; each split's partial stats are
    merged like an online softmax: m = max m_i, z = sum z_i e^(m_i - m), a likewise,
    s = sum s_i e^(2 (m_i - m)), dd = sum dd_i.
    """
    layers, batch, width = hidden.shape
    vocab = x.shape[1]
    k = candidates.shape[1]
    if k > FUSED_MAX_K:
        return False
    pairs = layers * batch
    if not pairs:
        return True
    tiles = _fused_tiles(weight.dtype)
    block_v = tiles.vocab
    row_blocks = triton.cdiv(pairs, tiles.rows)
    if interpreted():
        splits = min(4, triton.cdiv(vocab, block_v))
    else:
        programs = 4 * multiprocessors()
        splits = max(1, min(triton.cdiv(vocab, block_v), triton.cdiv(programs, row_blocks)))
    span = triton.cdiv(triton.cdiv(vocab, splits), block_v) * block_v
    splits = triton.cdiv(vocab, span)  # every split holds at least one column
    flat = hidden.reshape(pairs, width).contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    part = torch.empty(splits, 5, pairs, dtype=torch.float32, device=x.device)
    _sled_hidden_stats_kernel[(row_blocks, splits)](flat, weight, x, part, pairs, batch, vocab, width,
                                                    weight.stride(0), span, float(scale),
                                                    BLOCK_R=tiles.rows, BLOCK_V=block_v, BLOCK_H=tiles.hidden,
                                                    num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    m = part[:, 0]
    top = m.max(dim=0).values
    w = torch.exp(m - top)
    merged = torch.stack([top, (part[:, 1] * w).sum(0), (part[:, 2] * w).sum(0),
                          (part[:, 3] * w * w).sum(0), part[:, 4].sum(0)])
    stats.copy_(merged.reshape(5, layers, batch))
    if k:  # l_n at the candidates: K dot products per pair
        picked = weight[candidates].float()  # [B, K, H]
        candidate_logits.copy_(torch.einsum("lbh,bkh->lbk", hidden.float(), picked) * scale)
    return True
