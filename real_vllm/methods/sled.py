"""SLED: Self Logits Evolution Decoding.

Zhang et al., "SLED: Self Logits Evolution Decoding for Improving Factuality in Large Language
Models", NeurIPS 2024, arXiv 2411.02433 (ALGORITHMS.md §3). The final logits take one
approximate gradient step towards the "latent knowledge" the early layers point at:

    l' = l_N - alpha * (softmax(l_N) - P_latent)   on the top-k tokens of l_N,
    l' = lower_bound                               elsewhere.

alpha = 0 with k = V is plain decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from real_vllm import ops
from real_vllm.methods.params import require_integer, require_number


@dataclass(frozen=True)
class SLEDConfig:
    """Per-request SLED parameters; defaults are the paper's generation settings."""

    alpha: float = 2.0  # sled_alpha: the evolution rate, >= 0 (0 = no evolution)
    k: int = 10  # sled_k: the evolution scale, how many top tokens evolve, >= 1
    lower_bound: float = -1000.0  # sled_lower_bound: the logit every other token gets

    PARAMS = {"sled_alpha": "alpha", "sled_k": "k", "sled_lower_bound": "lower_bound"}

    def __post_init__(self):
        object.__setattr__(self, "alpha", require_number("sled_alpha", self.alpha, ge=0))
        object.__setattr__(self, "k", require_integer("sled_k", self.k, ge=1, le=2**24))
        object.__setattr__(self, "lower_bound", require_number("sled_lower_bound", self.lower_bound))


def apply_(logits, early, alpha, k, lower_bound) -> None:
    """Evolve float32 [R, V] logits in place. ``early`` is the early-layer tap: either
    (hidden [L, R, H], lm_head weight, logit scale) or full early logits [L, R, V]."""
    if isinstance(early, torch.Tensor):
        ops.sled_evolve(logits, early, alpha, k, lower_bound, inplace=True)
    else:
        hidden, weight, scale = early
        ops.sled_evolve_from_hidden(logits, hidden, weight, alpha, k, lower_bound, logit_scale=scale, inplace=True)
