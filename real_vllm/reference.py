"""Readable pure-torch twins of every op in :mod:`real_vllm.ops`.

These are the truth the fast backends are tested against. They favour clarity over speed:
full softmax, a real sort for the nucleus. Formulas are ALGORITHMS.md's.

Non-finite rows (the policy every backend follows):
  * a row with a NaN or +inf entry: entropy and EDT temperature are NaN (EDT with theta = 0
    is t0, as plain temperature would be), so the NaN stays visible downstream; ``top_p_mask`` leaves such a row unchanged;
  * a row whose entries are all -inf (nothing left to sample): entropy 0, so EDT gives
    ``t0 * min_scale`` and dividing keeps the row all -inf; ``top_p_mask`` leaves it unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["entropy", "edt_temperature", "apply_temperature", "apply_edt", "top_p_mask"]


def _per_row(value, batch: int) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32).flatten().expand(batch).float()


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
    """EDT (arXiv 2403.14541): T = t0 * max(n ** (theta / H), min_scale), per row.

    theta = 0 gives exactly t0 on every row (also where H = 0, where theta / H would be 0 / 0,
    and on a NaN row, whose NaN the division by t0 keeps visible).
    H = 0 with theta > 0 gives n ** inf = 0, so T = t0 * min_scale.
    """
    batch = logits.shape[0]
    t0, n, theta = (_per_row(v, batch) for v in (t0, n, theta))
    h = entropy(logits)
    scale = torch.pow(n, theta / h).clamp_min(min_scale)
    scale = torch.where(torch.isnan(h), h, scale)
    scale = torch.where(theta == 0, torch.ones_like(scale), scale)
    return t0 * scale


def apply_temperature(logits: torch.Tensor, temperature) -> torch.Tensor:
    """l / T per row, in float32 (a true division, as vLLM's own temperature step does)."""
    x = logits.float()
    return x / _per_row(temperature, x.shape[0]).unsqueeze(1)


def apply_edt(logits, t0, n=0.8, theta=1.0, min_scale=1e-5):
    """EDT end to end: (l / T, T) with T from :func:`edt_temperature`."""
    t = edt_temperature(logits, t0, n, theta, min_scale)
    return apply_temperature(logits, t), t


def top_p_mask(logits: torch.Tensor, top_p) -> torch.Tensor:
    """Nucleus: keep the smallest set of most probable tokens whose mass reaches p.

    The token whose mass crosses p is kept, the top-1 token always is, and tokens tied
    with the least probable kept token are kept too (so the result does not depend on a
    sort order). Everything else becomes -inf. p >= 1 keeps the row as it is; so does a
    non-finite row (see the module docstring). This is vLLM's top-p rule.
    """
    x = logits.float()
    batch = x.shape[0]
    p = _per_row(top_p, batch)
    probs = torch.softmax(x, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = mass_before < p.unsqueeze(1)
    keep_sorted[:, 0] = True
    # The least probable kept logit is the row's threshold.
    sorted_logits = x.gather(1, order)
    last_kept = keep_sorted.sum(dim=-1, keepdim=True) - 1
    threshold = sorted_logits.gather(1, last_kept)
    out = torch.where(x >= threshold, x, torch.full_like(x, float("-inf")))
    unchanged = (p >= 1) | _bad_rows(x) | (x == float("-inf")).all(dim=-1)
    return torch.where(unchanged.unsqueeze(1), x, out)
