"""An independent float64 implementation of docs/algorithms.md §1 and §3, written without
real_vllm code.

The ops are checked against both this oracle and real_vllm.reference.
"""

import math

import torch


def entropy64(logits: torch.Tensor) -> torch.Tensor:
    out = []
    for row in logits.double():
        finite = row[torch.isfinite(row)]
        if torch.isnan(row).any() or (row == math.inf).any():
            out.append(math.nan)
        elif finite.numel() == 0:
            out.append(0.0)
        else:
            z = finite - finite.max()
            p = z.exp() / z.exp().sum()
            out.append(float(-(p * p.log()).nansum()))
    return torch.tensor(out, dtype=torch.float64)


def edt_temperature64(logits, t0, n, theta, min_scale=1e-5) -> torch.Tensor:
    out = []
    for h, a, b, c in zip(entropy64(logits).tolist(), t0.tolist(), n.tolist(), theta.tolist()):
        if c == 0:
            out.append(a)
        elif math.isnan(h):
            out.append(math.nan)
        elif h == 0:
            out.append(a * min_scale)
        else:
            out.append(a * max(b ** (c / h), min_scale))
    return torch.tensor(out, dtype=torch.float64)


def nucleus_mass_before64(logits: torch.Tensor) -> torch.Tensor:
    """For every token: the probability mass of the tokens ranked before it (float64), ranked
    by logit, highest first, and among equal logits by index, lowest first (the nucleus' tie
    order). The nucleus keeps a token iff this is < p (and the first-ranked token always)."""
    x = logits.double()
    p = torch.softmax(x, dim=-1)
    out = torch.empty_like(p)
    for i in range(x.shape[0]):
        order = torch.argsort(x[i], descending=True, stable=True)
        sp = p[i, order]
        cum = torch.cat([sp.new_zeros(1), sp.cumsum(0)[:-1]])
        out[i, order] = cum
    return out


def nucleus_first64(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] bool: the first-ranked token of each row (the lowest index among its maxima)."""
    first = torch.zeros_like(logits, dtype=torch.bool)
    first[torch.arange(logits.shape[0]), logits.argmax(dim=-1)] = True
    return first
