"""Entropy-vs-model-size curves of THF, their asymptote, and REAL's per-step threshold.

REAL sampling (arXiv 2406.07735; docs/algorithms.md §2.1 the curve, §2.2 the threshold). For
each text position, THF outputs the parameters of a curve E(s): the next-token entropy (nats)
that a model of the training family with s = ln(non-embedding parameter count) would have there.
Every parameter is exp(head output), so all are positive and every curve falls with s towards its
asymptote c.

Forms (parameter layout along the last axis, in this order):

    "poly"      c, b, f, g, a_half, a_1..a_10 (15)    x = max(f (s - g), 1)
                E(s) = c + b (a_half x^-1/2 + sum_{i=1..10} a_i x^-i)
                The paper's released configuration ("..._exp_pred_last_a10_e3"); the default.
    "exp"       c, b, f, g (4)                          x = max(f (s - g), 0)
                E(s) = c + b exp(-x)
    "logistic"  c, b, f, g (4)                          x = max(f (s - g), 0)
                E(s) = c + b / (1 + e^x)

THF has one more output after the curve parameters, "pred_last", a direct prediction of the
largest family member's entropy (an auxiliary training target), so K = params + 1.

Functions accept either the curve parameters [..., P] or the whole THF output [..., K] (then
pred_last is ignored), in any float dtype; sizes are a number or a 1-D sequence/tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Number of curve parameters per form; the THF head has one more output (pred_last).
CURVES: dict[str, int] = {"poly": 15, "exp": 4, "logistic": 4}
DEFAULT_CURVE = "poly"
# Degree of the "poly" form: the inverse powers x^-1 .. x^-10 (the paper's "a10").
POLY_DEGREE = 10


def check_curve(curve: str) -> str:
    """Return `curve` if it names a known form, else raise ValueError listing the forms."""
    if curve not in CURVES:
        raise ValueError(f"unknown THF curve form {curve!r}; expected one of {sorted(CURVES)}")
    return curve


def num_params(curve: str = DEFAULT_CURVE) -> int:
    """Curve parameters of a form (15 for "poly", 4 for "exp" and "logistic")."""
    return CURVES[check_curve(curve)]


def num_outputs(curve: str = DEFAULT_CURVE) -> int:
    """K, the THF head width: the curve parameters plus pred_last (16 for "poly")."""
    return num_params(curve) + 1


def _curve_params(params: torch.Tensor, curve: str) -> torch.Tensor:
    n = num_params(curve)
    if params.shape[-1] not in (n, n + 1):
        raise ValueError(
            f"a {curve!r} curve needs {n} parameters (or {n + 1} THF outputs) on the last axis, "
            f"got shape {tuple(params.shape)}"
        )
    return params[..., :n]


def entropy_at(params: torch.Tensor, sizes: float | Sequence[float] | torch.Tensor,
               curve: str = DEFAULT_CURVE) -> torch.Tensor:
    """E(s): the curves [..., P] (or THF outputs [..., K]) evaluated at `sizes`.

    A 1-D `sizes` [S] gives [..., S]; a number (or 0-d tensor) gives [...].
    """
    p = _curve_params(params, curve)
    s = torch.as_tensor(sizes, dtype=p.dtype, device=p.device)
    if s.ndim > 1:
        raise ValueError(f"sizes must be a number or 1-D, got shape {tuple(s.shape)}")
    scalar = s.ndim == 0
    s = s.reshape(-1)
    # Each parameter as [..., 1] so it broadcasts against the sizes [S].
    c, b, f, g = (p[..., i, None] for i in range(4))
    if curve == "poly":
        x = torch.clamp(f * (s - g), min=1.0)
        inv = x.reciprocal()
        powers = torch.arange(1, POLY_DEGREE + 1, device=p.device, dtype=p.dtype)
        # [..., S, 10] inverse powers against the coefficients a_1..a_10 [..., 1, 10].
        poly = (inv.unsqueeze(-1) ** powers * p[..., None, 5:5 + POLY_DEGREE]).sum(-1)
        values = c + b * (p[..., 4, None] * inv.sqrt() + poly)
    else:
        x = torch.clamp(f * (s - g), min=0.0)
        decay = torch.exp(-x) if curve == "exp" else torch.sigmoid(-x)  # sigmoid(-x) = 1 / (1 + e^x)
        values = c + b * decay
    return values[..., 0] if scalar else values


def asymptote(params: torch.Tensor, curve: str = DEFAULT_CURVE) -> torch.Tensor:
    """lim_{s -> inf} E(s) = c for every form: the asymptotic entropy [...]."""
    return _curve_params(params, curve)[..., 0]


def residual_entropy(params: torch.Tensor, s_ref: float, curve: str = DEFAULT_CURVE) -> torch.Tensor:
    """d = E(s_ref) - c [...]: the entropy above the asymptote at the reference size.

    Positive whenever the parameters are (b and the decay terms are), as THF's always are.
    """
    return entropy_at(params, s_ref, curve) - asymptote(params, curve)


def family_predictions(outputs: torch.Tensor, sizes: Sequence[float] | torch.Tensor,
                       curve: str = DEFAULT_CURVE) -> torch.Tensor:
    """The curve at every family size followed by pred_last: [..., S + 1] from THF outputs [..., K].

    This is what training compares with the family's entropies, the largest member's entropy
    appended (the target of pred_last).
    """
    if outputs.shape[-1] != num_outputs(curve):
        raise ValueError(f"expected THF outputs with {num_outputs(curve)} values on the last axis "
                         f"for a {curve!r} curve, got shape {tuple(outputs.shape)}")
    return torch.cat([entropy_at(outputs, torch.as_tensor(sizes).reshape(-1), curve), outputs[..., -1:]], dim=-1)


def threshold(d: torch.Tensor | float, p0: torch.Tensor | float, decay: torch.Tensor | float) -> torch.Tensor:
    """REAL's per-step top-p: p_t = min(1, p0 * exp(-d / decay)) (docs/algorithms.md §2.2).

    Domain: d >= 0, p0 > 0, decay > 0 (math.inf allowed: it gives p_t = min(1, p0), i.e. plain
    top-p). This is the formula only: REAL's defaults and the validation of user parameters
    belong to the REAL method config (real_vllm.methods.real.REALConfig), so they are defined
    once. Numbers or tensors (per-row [B]) broadcast together.
    """
    d = torch.as_tensor(d)
    if not d.is_floating_point():
        d = d.float()
    decay = torch.as_tensor(decay, dtype=d.dtype, device=d.device)
    return torch.clamp(p0 * torch.exp(-d / decay), max=1.0)


__all__ = [
    "CURVES", "DEFAULT_CURVE", "POLY_DEGREE", "asymptote", "check_curve",
    "entropy_at", "family_predictions", "num_outputs", "num_params", "residual_entropy", "threshold",
]
