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
    """EDT (arXiv 2403.14541): T = t0 * max(n ** (theta / H), min_scale), per row.

    theta = 0 gives exactly t0 on every row (also where H = 0, where theta / H would be 0 / 0,
    and on a NaN row, whose NaN the division by t0 keeps visible).
    H = 0 with theta > 0 gives n ** inf = 0, so T = t0 * min_scale.
    """
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
    """Nucleus: keep the smallest set of most probable tokens whose mass reaches p.

    Tokens are ranked by logit, highest first, and among equal logits by index, lowest
    first (the order of a stable descending sort; the one vLLM's Triton top-p kernels keep,
    and argmax's). A token is kept iff the mass of the tokens ranked before it is < p, so
    the crossing token is kept and, of the tokens tied with it, only as many as the mass
    needs, the lowest indices; the top-1 token (the lowest index among the row's maxima)
    always is. p <= 0 (or NaN) keeps that one token. Everything else becomes -inf. p >= 1
    keeps the row as it is; so does a non-finite row (see the module docstring).

    This is the exact answer the fast backends are tested against: probabilities and their
    prefix sums in float64, one sort.
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
# Rows of the final logits that are masked (-inf, e.g. by min_tokens or a grammar) stay masked:
# they are never SLED candidates, and they carry no divergence information (their terms are
# left out of the sums over the vocabulary). A row holding a NaN or +inf is left unchanged, as
# top_p_mask does. On unmasked rows this is exactly ALGORITHMS.md §3 and §4.


def _cosine(dot: torch.Tensor, norm_sq_a: torch.Tensor, norm_sq_b: torch.Tensor) -> torch.Tensor:
    """dot / (|a| |b|), 0 where either vector is zero (no direction, no vote)."""
    denom = torch.sqrt(norm_sq_a * norm_sq_b)
    return torch.where(denom > 0, dot / denom.clamp_min(1e-30), torch.zeros_like(dot))


def sled_evolve(final_logits, early_logits, alpha=2.0, k=10, lower_bound=-1000.0) -> torch.Tensor:
    """SLED, Self Logits Evolution Decoding (Zhang et al., arXiv 2411.02433), one row at a time.

    final_logits [B, V], early_logits [L, B, V] (lm_head of the early residual streams).
    For the top-k tokens I of softmax(l_N) and every early layer n:
        c_{n,i} = cos(l_n - l_N, softmax(l_n) - e_i),  m_{n,i} = max(c, 0) ** 2
        P(i) = sum_n m_{n,i} / sum_n sum_{j in I} m_{n,j}    (0 if every m is 0)
        l'(i) = l_N(i) - alpha * (softmax(l_N)(i) - P(i)),   l'(v) = lower_bound for v not in I.
    """
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
        weight = cos.clamp_min(0) ** 2  # [L, k]
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
    """DoLa (Chuang et al., arXiv 2309.03883): contrast the final layer with the premature
    layer M that diverges most from it, on the plausible tokens.

        M = argmax_j D(q_N, q_j)
        score(x) = log q_N(x) - log q_M(x)  if q_N(x) >= relative_top * max q_N,  else -inf

    D, per row (``divergence``: "authors", "jsd", or a [B] tensor, nonzero = jsd), with the
    mixture m = (q_N + q_j) / 2 and V the vocabulary size:
      * "authors" (the default), what the published numbers come from: the authors' code
        (voidism/DoLa) and transformers' ``_dola_select_contrast`` (transformers 4.46.3,
        src/transformers/generation/utils.py lines 4696-4740;
        its ``_relative_top_filter``, lines 4671-4693, is the plausibility cut below) take
        ``F.kl_div(log q, m, reduction="none").mean(-1)`` for q = q_N and q = q_j and halve
        their sum: 1/2 [KL(m || q_N) + KL(m || q_j)] / V. Unbounded.
      * "jsd", the paper's formula: 1/2 [KL(q_N || m) + KL(q_j || m)], bounded by ln 2.

    Returns (scores [B, V], M [B] as an index into early_logits' first dimension). The first
    layer wins a tie (as torch.argmax does there). Rows with a NaN or +inf (or all -inf) are
    returned unchanged; masked tokens (-inf final logits) are left out of both divergences.
    Every tensor made here lives on the final logits' device.
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
