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


MIN_CHUNK = 1024  # vocabulary rows per GEMM below which plan() takes fewer rows instead


def plan(num_rows: int, num_layers: int, vocab: int, *, from_hidden: bool, logits_dtype_bytes: int = 4,
         budget: int | None = None) -> tuple[int, int]:
    """(rows per call, vocabulary chunk) for a SLED step of ``num_rows`` rows, so that its working
    memory stays under ``budget`` bytes.

    From hidden states (ops.sled_evolve_from_hidden) the memory is the [L * rows, chunk] early
    logits of one chunk, counted per element as the float32 chunk still held while the next is
    made (4 bytes), lm_head's output in its own dtype and its float32 or scaled copy (4): plus a
    float32 copy of each row's logits (a mixed batch gathers them). Chunks shrink before rows do,
    down to MIN_CHUNK. From full early logits (a tensor-parallel or quantised lm_head) a call
    holds [L, rows, V] float32, one layer's lm_head output and the row copies. The Triton backend
    fuses the projection and ignores the chunk. The reference backend (no C++ extension built)
    is a readable fallback whose own temporaries are not bounded by this plan.
    """
    budget = int(ops.WORKING_MEMORY if budget is None else budget)
    row_copy = 4 * vocab
    if not from_hidden:
        per_row = vocab * (4 * num_layers + logits_dtype_bytes + 4)
        return max(1, min(num_rows, budget // per_row)), vocab
    element = 4 + logits_dtype_bytes + 4
    rows = max(1, min(num_rows, budget // (row_copy + num_layers * min(MIN_CHUNK, vocab) * element)))
    chunk = (budget - rows * row_copy) // (num_layers * rows * element)
    return rows, max(1, min(vocab, chunk))


def apply_(logits, early, alpha, k, lower_bound, chunk: int = ops.SLED_CHUNK) -> None:
    """Evolve float32 [R, V] logits in place. ``early`` is the early-layer tap: either
    (hidden [L, R, H], lm_head weight, logit scale) or full early logits [L, R, V]; ``chunk``:
    the vocabulary rows of lm_head per GEMM in the first case (see plan())."""
    if isinstance(early, torch.Tensor):
        ops.sled_evolve(logits, early, alpha, k, lower_bound, inplace=True)
    else:
        hidden, weight, scale = early
        ops.sled_evolve_from_hidden(logits, hidden, weight, alpha, k, lower_bound, logit_scale=scale, chunk=chunk,
                                    inplace=True)
