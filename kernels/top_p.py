"""Top-p (nucleus) mask in place, sort-free: -inf outside each row's nucleus.

The nucleus of docs/algorithms.md §3 (REAL ends in it, §2.2), found through tau, the crossing
token's logit, and F(v) = sum_{l >= v} e^(l - m) as stated there; non-finite rows: §7.

One program per row:
  1. a stats pass (row_stats: max m, normaliser Z, least finite entry);
  2. search passes, typically 2-6 and at most 13, over an interval [lo, hi) that holds tau:
     F(lo) >= p Z > F(hi), cmax the largest entry inside. Each pass evaluates F at K pivots
     spread over [lo, cmax] with a [BLOCK, K] compare, plus the least entry >= each pivot
     and the largest below it, then keeps the sub-interval holding the crossing. It stops
     when the entries inside are all one value: that value is tau;
     The search's own float32 sums give F(> tau) (= F(hi)), hence n;
  3. a masking pass (one read, writes only the masked entries): entries < tau, and entries
     equal to tau past the first n of them in index order (a running count; blocks without
     such an entry skip the count).
"""

import torch
import triton
import triton.language as tl

from .row_stats import row_stats, stats_block

K = 16  # pivots per search pass: the interval shrinks about 15-fold per pass
BLOCK = 512  # entries per step of a search pass ([BLOCK, K] tiles)
VALUE_PASSES = 4  # then pivots spread over bit patterns: at most 4 + 9 passes in all
MAX_PASSES = 16  # a safety bound only


@triton.jit
def _key(v):
    # float32 -> int32, order-preserving (negative floats have their magnitude bits flipped).
    b = v.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _from_key(key):
    b = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _pivots(k, lo, cmax, by_key, K: tl.constexpr):
    # Non-decreasing in k, exactly lo at k = 0 and cmax at k >= K - 1, so the last
    # sub-interval [cmax, hi) holds a single value and every pass drops values from the
    # interval. Evenly spread in value first (best for ordinary logits), then evenly spread
    # over the float32 bit patterns: those cut the count of representable values in the
    # interval 15-fold per pass, whatever its span, so the search ends within 9 such passes.
    kk = tl.minimum(k, K - 1)
    q = lo + (cmax - lo) * (kk.to(tl.float32) * (1.0 / (K - 1)))
    q = tl.minimum(tl.maximum(q, lo), cmax)
    key_lo = _key(lo).to(tl.int64)
    key_q = key_lo + (_key(cmax).to(tl.int64) - key_lo) * kk.to(tl.int64) // (K - 1)
    q = tl.where(by_key, _from_key(key_q.to(tl.int32)), q)
    q = tl.where(kk == 0, lo, q)
    return tl.where(kk == K - 1, cmax, q)


@triton.jit
def _top_p_kernel(x_ptr, p_ptr, V, STATS_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
                  K: tl.constexpr, VALUE_PASSES: tl.constexpr, MAX_PASSES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = x_ptr + row * V
    p = tl.load(p_ptr + row)
    # p >= 1 keeps the whole row: rows of requests without a nucleus cost no pass at all.
    if (p < 1.0) | (p != p):
        m, z, _, row_min, bad = row_stats(row_ptr, V, STATS_BLOCK, "evict_last")
        active = (z > 0) & ~bad
        target = p * z
        # Entries below m + ln((1 - p) Z / 2V) hold less than (1 - p) Z / 2 in all, so tau is
        # above that bound with a margin far beyond rounding (for p < 0.9999): for real logits
        # it leaves only a small share of the row inside the first interval.
        bound = m + tl.log(0.5 * (1.0 - p) * z / V)
        lo = tl.where(p < 0.9999, tl.maximum(row_min, bound), row_min)
        # p <= 0 (or NaN) keeps the top-1 token: tau = m, no search, n = 1.
        lo = tl.where(p > 0, lo, m)
        cmax = m
        hi = tl.full([], float("inf"), tl.float32)
        f_hi = tl.zeros([], tl.float32)  # F(hi), kept apart so each pass sums only the interval
        k = tl.arange(0, K)
        offs = tl.arange(0, BLOCK)
        passes = 0
        while active & (lo < cmax) & (passes < MAX_PASSES):
            by_key = passes >= VALUE_PASSES
            q = _pivots(k, lo, cmax, by_key, K)
            mass = tl.zeros([K], tl.float32)  # mass of the interval's entries >= q_k
            least = tl.full([K], float("inf"), tl.float32)  # least entry >= q_k
            below = tl.full([K], float("-inf"), tl.float32)  # largest entry < q_k
            for start in range(0, V, BLOCK):
                idx = start + offs
                x = tl.load(row_ptr + idx, mask=idx < V, other=float("-inf"), eviction_policy="evict_last")
                inside = (x >= lo) & (x < hi)
                # Once the interval is narrow most blocks hold none of it: skip the [BLOCK, K] work.
                if tl.max(inside.to(tl.int32), 0) > 0:
                    e = tl.where(inside, tl.exp(x - m), 0.0)
                    # Entries outside count as +inf: >= every pivot, with no mass.
                    xin = tl.where(inside, x, float("inf"))[:, None]
                    ge = xin >= q[None, :]
                    mass += tl.sum(tl.where(ge, e[:, None], 0.0), 0)
                    least = tl.minimum(least, tl.min(tl.where(ge, xin, float("inf")), 0))
                    below = tl.maximum(below, tl.max(tl.where(ge, float("-inf"), xin), 0))
            f = f_hi + mass
            # The last pivot with F >= target. Pivots at or below the interval's least entry
            # count as such whatever this pass's rounding says: they see the same entries as lo,
            # where the invariant holds. The chosen sub-interval [q_k, q_k+1) is never empty: it
            # holds that least entry, or mass F(q_k) - F(q_k+1) > 0, or (k = K - 1) cmax.
            least_entry = tl.min(least, 0)
            kstar = tl.max(tl.where((f >= target) | (q <= least_entry), k, 0), 0)
            last = kstar == K - 1
            lo = tl.min(tl.where(k == kstar, least, float("inf")), 0)
            cmax = tl.where(last, cmax, tl.max(tl.where(k == kstar + 1, below, float("-inf")), 0))
            hi = tl.where(last, hi, tl.min(tl.where(k == kstar + 1, q, float("inf")), 0))
            f_hi += tl.sum(tl.where(k == kstar + 1, mass, 0.0), 0)
            passes += 1
        # tau = lo = cmax, and [tau, hi) holds no other value, so F(> tau) = F(hi) = f_hi.
        # (Were MAX_PASSES ever reached, keeping [lo, hi) keeps a superset.)
        tau = lo
        # Of the entries equal to tau, the least count n with f_hi + n e^(tau - m) >= target,
        # in the search's float32: n >= 1 always (NaN too), and n >= V keeps them all.
        n_f = tl.ceil((target - f_hi) / tl.exp(tau - m))
        n_f = tl.minimum(tl.where(n_f >= 1.0, n_f, 1.0), V * 1.0)
        n_keep = tl.where(lo < cmax, V, n_f.to(tl.int32))
        seen = tl.zeros([], tl.int32)  # entries equal to tau in the blocks before this one
        if active:
            for start in range(0, V, BLOCK):
                idx = start + offs
                x = tl.load(row_ptr + idx, mask=idx < V, other=float("inf"), eviction_policy="evict_first")
                drop = x < tau
                tie = (x == tau).to(tl.int32)
                n_tie = tl.sum(tie, 0)
                if n_tie > 0:
                    rank = seen + tl.cumsum(tie, 0)  # 1-based, in index order
                    drop = drop | ((tie > 0) & (rank > n_keep))
                seen += n_tie
                tl.store(row_ptr + idx, tl.full([BLOCK], float("-inf"), tl.float32), mask=drop)


def top_p_mask_(x: torch.Tensor, top_p: torch.Tensor) -> None:
    """x: contiguous float32 [B, V], masked in place; top_p: contiguous float32 [B]."""
    batch, vocab = x.shape
    if batch:
        _top_p_kernel[(batch,)](x, top_p, vocab, STATS_BLOCK=stats_block(vocab),
                                BLOCK=min(BLOCK, triton.next_power_of_2(vocab)), K=K,
                                VALUE_PASSES=VALUE_PASSES, MAX_PASSES=MAX_PASSES, num_warps=8)
