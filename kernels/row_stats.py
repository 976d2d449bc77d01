"""Online softmax statistics of one row of logits, in one read (shared by every kernel here).

``row_stats`` returns the row max m, Z = sum exp(l - m), S = sum exp(l - m) (l - m), the
smallest finite entry and whether the row holds a NaN or +inf; ``row_entropy`` turns them
into H = ln Z - S / Z (EDT, arXiv 2403.14541, needs H; the nucleus needs m and Z).

Each of the BLOCK lanes keeps its own running (m, Z, S) over the elements it sees, so the
loop does no cross-lane reduction and one exp per element: when a lane's max rises from m
to x, Z' = Z e^(m-x) + 1 and S' = e^(m-x) (S + Z (m - x)); otherwise Z' = Z + e^(x-m) and
S' = S + e^(x-m) (x - m). The lanes are merged once at the end with the same rule.
Entries equal to -inf contribute nothing (they are skipped, never multiplied by 0).
"""

import triton
import triton.language as tl


@triton.jit
def row_stats(row_ptr, V, BLOCK: tl.constexpr, EVICT: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK], tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    bad = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        x = tl.load(row_ptr + idx, mask=idx < V, other=float("-inf"), eviction_policy=EVICT)
        bad = tl.maximum(bad, ((x != x) | (x == float("inf"))).to(tl.int32))
        valid = x > float("-inf")
        lo = tl.where(valid, tl.minimum(lo, x), lo)
        d = x - m
        up = d > 0  # also the first finite entry of a lane (m = -inf, d = +inf)
        t = tl.exp(-tl.abs(d))
        z_new = tl.where(up, z * t + 1.0, z + t)
        # z == 0: the lane was empty, and z * d would be 0 * inf.
        s_new = tl.where(up, tl.where(z > 0, t * (s - z * d), 0.0), s + t * d)
        z = tl.where(valid, z_new, z)
        s = tl.where(valid, s_new, s)
        m = tl.where(up, x, m)
    row_max = tl.max(m, 0)
    has = z > 0
    # Empty lanes (m = -inf) would give exp(-inf - -inf) = NaN: they weigh 0 instead.
    a = tl.where(has, tl.exp(m - row_max), 0.0)
    z_row = tl.sum(a * z, 0)
    s_row = tl.sum(tl.where(has, a * (s + z * (m - row_max)), 0.0), 0)
    return row_max, z_row, s_row, tl.min(lo, 0), tl.max(bad, 0) > 0


@triton.jit
def row_entropy(z, s, bad):
    """H in nats from row_stats; +0.0 for an all -inf row (z = 0), NaN for a NaN/+inf row."""
    safe_z = tl.where(z > 0, z, 1.0)
    h = tl.log(safe_z) - s / safe_z
    # Clamp to +0.0: rounding can leave -0.0 or -1e-9, and theta / -0.0 would send EDT to +inf.
    h = tl.where(h > 0, h, 0.0)
    return tl.where(bad, float("nan"), h)


def stats_block(vocab: int) -> int:
    """Elements per loop step of a stats pass: a power of two, at most 2048."""
    return min(2048, triton.next_power_of_2(vocab))
