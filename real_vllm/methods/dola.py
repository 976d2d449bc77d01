"""DoLa: Decoding by Contrasting Layers.

Chuang et al., "DoLa: Decoding by Contrasting Layers Improves Factuality in Large Language
Models", ICLR 2024, arXiv 2309.03883 (ALGORITHMS.md §4). Per step the premature layer M is the
candidate layer whose next-token distribution diverges most (Jensen-Shannon) from the final
one, and the logits become log q_N - log q_M on the tokens with q_N >= relative_top * max q_N
(-inf elsewhere). The paper recommends a repetition penalty of 1.2 with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from real_vllm import ops
from real_vllm.methods.params import require_number


@dataclass(frozen=True)
class DoLaConfig:
    relative_top: float = 0.1  # dola_relative_top: the plausibility cut, in (0, 1]

    PARAMS = {"dola_relative_top": "relative_top"}

    def __post_init__(self):
        object.__setattr__(
            self, "relative_top", require_number("dola_relative_top", self.relative_top, gt=0, le=1)
        )


def candidate_layers(num_layers: int, which, tied_embeddings: bool) -> list[int]:
    """DoLa's candidate premature layers: 'low', 'high' (the paper's buckets) or a list.

    start = 2 with tied embeddings (layer 0's logits would be the embedding's own), else 0;
    'low' = range(start, N // 2, 2), 'high' = range(N // 2, N, 2); for N > 40 the buckets are
    range(start, 20, 2) and range(N - 20, N, 2).
    """
    n = num_layers
    start = 2 if tied_embeddings else 0
    if which == "low":
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    if which == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    return list(which)


def apply_(logits: torch.Tensor, early_logits: torch.Tensor, relative_top: torch.Tensor) -> None:
    """Replace float32 [R, V] logits in place by DoLa's contrast with [L, R, V] early logits."""
    scores, _ = ops.dola_contrast(logits, early_logits, relative_top)
    logits.copy_(scores)
