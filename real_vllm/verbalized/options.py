"""The knobs every part of Verbalized Sampling shares: defaults, limits, and their checks.

Each check raises ValueError naming the parameter, so bad options are refused before a request
goes out (and, in ``real-vllm vs``, before a server starts).
"""

from __future__ import annotations

import math
from typing import Any

METHODS = ("standard", "cot", "multi")
DEFAULT_K = 5
# Generation defaults within the paper's range (docs/algorithms.md §6.3).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 1.0
# Long enough for a short story's opening or a poem, short enough that k of them fit in a
# 4096-token context on a small model.
DEFAULT_MAX_TEXT_CHARS = 300
DEFAULT_MAX_REASONING_CHARS = 600
# A hard cap on k: beyond this the prompt is not what the paper studied (k = 5 by default) and a
# regex with k bounded strings grows linearly.
MAX_K = 50
ALL_ZERO_POLICIES = ("uniform", "error")


def check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name} must be an integer, got {type(k).__name__} {k!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"{name} must be between 1 and {MAX_K}, got {k}")
    return k


def check_tau(tau: Any) -> float | None:
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise ValueError(f"tau must be a number in (0, 1], got {tau!r}")
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau:g}")
    return float(tau)


def check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def check_per_turn(method: str, m: Any) -> None:
    """``m`` (responses per turn) is VS-Multi's alone."""
    if m is not None and method != "multi":
        raise ValueError(f"m (responses per turn) is for method 'multi', not {method!r}")


def check_chars(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return n


def check_choice(value: Any, name: str, choices) -> str:
    if value not in choices:
        choices = list(choices)
        allowed = f"{choices[0]!r} or {choices[1]!r}" if len(choices) == 2 else f"one of {', '.join(choices)}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value
