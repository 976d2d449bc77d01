"""An independent float64 implementation of ALGORITHMS.md, written without real_vllm code.

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
    """For every token: the probability mass of tokens strictly more probable (float64)."""
    x = logits.double()
    p = torch.softmax(x, dim=-1)
    out = torch.empty_like(p)
    for i in range(x.shape[0]):
        order = torch.argsort(x[i], descending=True, stable=True)
        sp = p[i, order]
        cum = sp.cumsum(0) - sp
        # Tied tokens all see the mass of the strictly larger ones.
        vals = x[i, order]
        first_of_tie = torch.ones_like(vals, dtype=torch.bool)
        first_of_tie[1:] = vals[1:] != vals[:-1]
        idx = torch.cummax(torch.where(first_of_tie, torch.arange(len(vals)), 0), 0).values
        out[i, order] = cum[idx]
    return out
