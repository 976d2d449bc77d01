"""Checks for per-request parameters: every error names the parameter the user sent."""

from __future__ import annotations

import math
from typing import Any


FLOAT32_MAX = 3.4028234663852886e38


def require_number(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """``value`` as a finite float within the bounds, or a ValueError naming ``name``."""
    # bool is an int subclass; "true" for a temperature is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {_show(value)}")
    value = float(value)
    # Per-request values live in float32 slot tensors: beyond its range they would overflow
    # there, inside the engine's step, instead of failing the request here.
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(f"{name} must be a finite number within float32 range, got {value:g}")
    bounds = [
        (gt, lambda b: value > b, "> {}"),
        (ge, lambda b: value >= b, ">= {}"),
        (lt, lambda b: value < b, "< {}"),
        (le, lambda b: value <= b, "<= {}"),
    ]
    for bound, ok, text in bounds:
        if bound is not None and not ok(bound):
            wanted = " and ".join(t.format(b) for b, _, t in bounds if b is not None)
            raise ValueError(f"{name} must be {wanted}, got {value:g}")
    return value


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_integer(name: str, value: Any, *, ge: int | None = None, le: int | None = None) -> int:
    """``value`` as an int within the bounds (2.0 is accepted, 2.5 is not), or a ValueError."""
    number = require_number(name, value)
    if number != int(number):
        raise ValueError(f"{name} must be an integer, got {number:g}")
    if ge is not None and number < ge or le is not None and number > le:
        wanted = " and ".join(t for t in (f">= {ge}" if ge is not None else "", f"<= {le}" if le is not None else "") if t)
        raise ValueError(f"{name} must be {wanted}, got {number:g}")
    return int(number)
