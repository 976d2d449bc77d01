"""Readable pure-torch twins of every op in :mod:`real_vllm.ops`.

These are the truth the fast backends are tested against. They favour clarity over speed:
full softmax, a real sort for the nucleus. The formulas are docs/algorithms.md's, and so is
the policy for non-finite rows that every backend follows (§7).
"""

from __future__ import annotations

import torch

__all__ = [
    "entropy",
    "edt_temperature",
    "apply_temperature",
    "apply_edt",
    "top_p_mask",
    "sled_evolve",
    "dola_contrast",
]


def _per_row(value, like: torch.Tensor) -> torch.Tensor:
    """A number or a [B] / [1] tensor as [B] float32 on ``like``'s device (B = like's rows)."""
    return torch.as_tensor(value, dtype=torch.float32, device=like.device).flatten().expand(like.shape[0]).float()


def _bad_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows holding a NaN or +inf: their softmax is undefined."""
    return (torch.isnan(x) | (x == float("inf"))).any(dim=-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(l)) = -sum p ln p in nats, per row. [B, V] -> [B] float32."""
    x = logits.float()
    log_p = torch.log_softmax(x, dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    h = -terms.sum(dim=-1)
    # Clamp to +0: rounding can leave -0.0 or -1e-9 on a peaked row, and theta / -0.0
    # would send EDT to +inf instead of its min_scale. Also covers all -inf rows.
    h = torch.where(h > 0, h, torch.zeros_like(h))
    return torch.where(_bad_rows(x), torch.full_like(h, float("nan")), h)


def edt_temperature(logits, t0, n=0.8, theta=1.0, min_scale=1e-5) -> torch.Tensor:
    """EDT (arXiv 2403.14541; docs/algorithms.md §1): T = t0 * max(n ** (theta / H), min_scale),
    per row; theta = 0 is exactly t0 on every row, H = 0 gives t0 * min_scale."""
    t0, n, theta = (_per_row(v, logits) for v in (t0, n, theta))
    h = entropy(logits)
    scale = torch.pow(n, theta / h).clamp_min(min_scale)
    scale = torch.where(torch.isnan(h), h, scale)
    scale = torch.where(theta == 0, torch.ones_like(scale), scale)
    return t0 * scale


def apply_temperature(logits: torch.Tensor, temperature) -> torch.Tensor:
    """l / T per row, in float32 (a true division, as vLLM's own temperature step does)."""
    x = logits.float()
    return x / _per_row(temperature, x).unsqueeze(1)


def apply_edt(logits, t0, n=0.8, theta=1.0, min_scale=1e-5):
    """EDT end to end: (l / T, T) with T from :func:`edt_temperature`."""
    t = edt_temperature(logits, t0, n, theta, min_scale)
    return apply_temperature(logits, t), t


def top_p_mask(logits: torch.Tensor, top_p) -> torch.Tensor:
    """The nucleus of docs/algorithms.md §3: a token is kept iff the mass ranked before it
    (ties lowest index first) is < p, the top-1 always; everything else becomes -inf.

    This is the exact answer the fast backends are tested against: probabilities and their
    prefix sums in float64, one stable sort.
    """
    x = logits.float()
    batch = x.shape[0]
    p = _per_row(top_p, x).double()
    x64 = x.double()
    # stable=True: equal logits keep their index order, lowest index first.
    sorted_x, order = torch.sort(x64, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_x, dim=-1)
    # Mass strictly before each ranked token: an exclusive prefix sum.
    mass_before = torch.cat([probs.new_zeros(batch, 1), probs.cumsum(dim=-1)[:, :-1]], dim=-1)
    keep_sorted = (mass_before < p.unsqueeze(1)) & (sorted_x > float("-inf"))
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    out = torch.where(keep, x, torch.full_like(x, float("-inf")))
    unchanged = (p >= 1) | _bad_rows(x) | (x == float("-inf")).all(dim=-1)
    return torch.where(unchanged.unsqueeze(1), x, out)


# --------------------------------------------------------------------------- SLED and DoLa
#
# docs/algorithms.md §4.1 and §5; masked tokens and non-finite rows as §7 says.


def _cosine(dot: torch.Tensor, norm_sq_a: torch.Tensor, norm_sq_b: torch.Tensor) -> torch.Tensor:
    """dot / (|a| |b|), 0 where either vector is zero (no direction, no vote)."""
    denom = torch.sqrt(norm_sq_a * norm_sq_b)
    return torch.where(denom > 0, dot / denom.clamp_min(1e-30), torch.zeros_like(dot))


def sled_evolve(final_logits, early_logits, alpha=2.0, k=10, lower_bound=-1000.0) -> torch.Tensor:
    """SLED, Self Logits Evolution Decoding (Zhang et al., arXiv 2411.02433; docs/algorithms.md
    §4.1), one row at a time, from the full vectors: final_logits [B, V], early_logits [L, B, V]
    (lm_head of the early residual streams)."""
    x = final_logits.float()
    early = early_logits.float()
    batch, vocab = x.shape
    alpha, k, lower_bound = (_per_row(v, x) for v in (alpha, k, lower_bound))
    out = x.clone()
    for b in range(batch):
        row = x[b]
        finite = row > float("-inf")
        if _bad_rows(row[None])[0] or not finite.any():
            continue
        kb = int(min(int(k[b]), int(finite.sum())))
        candidates = torch.topk(row, kb).indices
        p_final = torch.softmax(row, dim=-1)
        diff = torch.where(finite, early[:, b] - row, torch.zeros_like(early[:, b]))  # [L, V]
        p_early = torch.softmax(early[:, b], dim=-1)  # [L, V]
        onehot = torch.zeros(kb, vocab, device=x.device)
        onehot[torch.arange(kb, device=x.device), candidates] = 1.0
        grad = p_early[:, None, :] - onehot[None]  # [L, k, V]: the gradient of CE at e_i
        dot = (diff[:, None, :] * grad).sum(-1)
        cos = _cosine(dot, (diff**2).sum(-1)[:, None], (grad**2).sum(-1))
        # A layer whose cosines are undefined (a non-finite early row) gives no vote.
        weight = torch.nan_to_num(cos, nan=0.0).clamp_min(0) ** 2  # [L, k]
        total = weight.sum()
        latent = weight.sum(0) / total if total > 0 else torch.zeros(kb, device=x.device)
        out[b] = torch.where(finite, lower_bound[b], float("-inf"))
        out[b, candidates] = row[candidates] - alpha[b] * (p_final[candidates] - latent)
    return out


DOLA_DIVERGENCES = ("authors", "jsd")  # code 0, 1 (the per-row tensor form of the choice)


def _dola_jsd_rows(divergence, batch: int, device) -> torch.Tensor:
    """The divergence choice as a [B] bool tensor (True = the paper's JSD) on ``device``."""
    if isinstance(divergence, str):
        if divergence not in DOLA_DIVERGENCES:
            raise ValueError(f"divergence must be one of {DOLA_DIVERGENCES}, got {divergence!r}")
        return torch.full((batch,), divergence == "jsd", dtype=torch.bool, device=device)
    return torch.as_tensor(divergence, device=device).flatten().expand(batch) != 0


def dola_contrast(final_logits, early_logits, relative_top=0.1, divergence="authors"):
    """DoLa (Chuang et al., arXiv 2309.03883; docs/algorithms.md §5): the final layer contrasted
    with the premature layer M that diverges most from it, on the plausible tokens.

    ``divergence``: "authors" (the default: transformers 4.46.3 ``_dola_select_contrast``,
    src/transformers/generation/utils.py lines 4696-4740, with its ``_relative_top_filter``,
    lines 4671-4693), "jsd" (the paper's), or a [B] tensor (nonzero = jsd). Returns
    (scores [B, V], M [B] as an index into early_logits' first dimension); the first layer wins
    a tie (as torch.argmax does there). Every tensor made here lives on the final logits'
    device.
    """
    x = final_logits.float()
    device = x.device
    early = early_logits.float().to(device)
    batch, vocab = x.shape
    relative_top = torch.as_tensor(relative_top, dtype=torch.float32, device=device).flatten().expand(batch)
    use_jsd = _dola_jsd_rows(divergence, batch, device)
    log_q = torch.log_softmax(x, dim=-1)[None]  # [1, B, V]
    log_e = torch.log_softmax(early, dim=-1)  # [L, B, V]
    q, e = log_q.exp(), log_e.exp()
    m = 0.5 * (q + e)
    log_m = torch.log(m)
    counted = x > float("-inf")  # [B, V]: a masked token carries no information

    def kl(p, log_p, log_r):  # sum_v p (log p - log r) over the counted tokens, 0 log 0 = 0
        return torch.where(counted & (p > 0), p * (log_p - log_r), torch.zeros_like(log_m)).sum(-1)

    authors = 0.5 * (kl(m, log_m, log_q) / vocab + kl(m, log_m, log_e) / vocab)  # [L, B]
    jsd = 0.5 * (kl(q, log_q, log_m) + kl(e, log_e, log_m))
    premature = torch.where(use_jsd[None], jsd, authors).argmax(dim=0)
    log_q_m = log_e[premature, torch.arange(batch, device=device)]
    log_q = log_q[0]
    keep = log_q >= log_q.max(dim=-1, keepdim=True).values + torch.log(relative_top)[:, None]
    scores = torch.where(keep, log_q - log_q_m, torch.full_like(x, float("-inf")))
    unchanged = _bad_rows(x) | (x == float("-inf")).all(dim=-1)
    return torch.where(unchanged[:, None], x, scores), premature
