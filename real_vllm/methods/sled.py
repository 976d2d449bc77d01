"""SLED: Self Logits Evolution Decoding.

Zhang et al., "SLED: Self Logits Evolution Decoding for Improving Factuality in Large Language
Models", NeurIPS 2024, arXiv 2411.02433; the maths and defaults: docs/algorithms.md §4. The
final logits take one approximate gradient step towards the distribution the early layers
point at, on the top-k tokens of the final logits (every other token gets lower_bound);
alpha = 0 with k = V is plain decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from real_vllm import ops
from real_vllm.methods.base import Method, Stage, row_chunks
from real_vllm.methods.params import require_integer, require_number


@dataclass(frozen=True)
class SLEDConfig:
    """Per-request SLED parameters; defaults are the paper's generation settings."""

    alpha: float = 2.0  # sled_alpha: the evolution rate, >= 0 (0 = no evolution)
    k: int = 10  # sled_k: the evolution scale, how many top tokens evolve, >= 1
    lower_bound: float = -1000.0  # sled_lower_bound: the logit every other token gets

    PARAMS = {"sled_alpha": "alpha", "sled_k": "k", "sled_lower_bound": "lower_bound"}
    # Rows of other requests are never touched (the early-layer processor picks SLED's rows);
    # these fill their slots: alpha = 0 leaves the top-k logits as they are.
    IDENTITY = {"sled_alpha": 0.0, "sled_k": 1.0, "sled_lower_bound": -1000.0}

    def __post_init__(self):
        object.__setattr__(self, "alpha", require_number("sled_alpha", self.alpha, ge=0))
        object.__setattr__(self, "k", require_integer("sled_k", self.k, ge=1, le=2**24))
        object.__setattr__(self, "lower_bound", require_number("sled_lower_bound", self.lower_bound))


MIN_CHUNK = 1024  # vocabulary rows per GEMM below which plan() takes fewer rows instead


def plan(num_rows: int, num_layers: int, vocab: int, *, from_hidden: bool, logits_dtype_bytes: int = 4,
         budget: int | None = None, cpu: bool = True) -> tuple[int, int]:
    """(rows per call, vocabulary chunk) for a SLED step of ``num_rows`` rows, so that its working
    memory stays under ``budget`` bytes.

    From hidden states (ops.sled_evolve_from_hidden) the memory is the [L * rows, chunk] early
    logits of one chunk, counted per element as the float32 chunk still held while the next is
    made (4 bytes), lm_head's output in its own dtype and its float32 or scaled copy (4): plus a
    float32 copy of each row's logits (a mixed batch gathers them). Chunks shrink before rows do,
    down to MIN_CHUNK; on the CPU (``cpu``) they are at most ops.SLED_CPU_CHUNK, the fastest
    measured there (see ops). From full early logits (a tensor-parallel or quantised lm_head) a
    call holds [L, rows, V] float32, one layer's lm_head output and the row copies. The Triton backend
    fuses the projection and ignores the chunk. The reference backend (no C++ extension built)
    is a readable fallback whose own temporaries are not bounded by this plan.
    """
    budget = int(ops.WORKING_MEMORY if budget is None else budget)
    row_copy = 4 * vocab
    if not from_hidden:
        per_row = vocab * (4 * num_layers + logits_dtype_bytes + 4)
        return max(1, min(num_rows, budget // per_row)), vocab
    element = 4 + logits_dtype_bytes + 4
    widest = min(vocab, ops.SLED_CPU_CHUNK) if cpu else vocab
    rows = max(1, min(num_rows, budget // (row_copy + num_layers * min(MIN_CHUNK, widest) * element)))
    chunk = (budget - rows * row_copy) // (num_layers * rows * element)
    return rows, max(1, min(widest, chunk))


class SLED(Method):
    name = "sled"
    stage = Stage.EARLY_LAYERS
    config = SLEDConfig

    def apply(self, logits: torch.Tensor, step) -> None:
        """Evolve the SLED rows of float32 [B, V] ``logits`` in place, in row chunks sized by
        plan() (vLLM's memory profiling never runs the processors, so the working memory must
        stay small whatever the batch)."""
        rows = step.rows(self.name)
        if not len(rows):
            return None
        early = step.early
        streamed = early.streams_from_hidden
        rows_per_call, chunk = plan(len(rows), early.num_layers(self.name), logits.shape[1], from_hidden=streamed,
                                    logits_dtype_bytes=early.logits_dtype_bytes, cpu=logits.device.type == "cpu")
        alpha, lower_bound = step.column("sled_alpha"), step.column("sled_lower_bound")
        for part, pick, target in row_chunks(logits, rows, rows_per_call):
            k = torch.from_numpy(step.row_values("sled_k", part))  # the top-k width on the host: no sync
            layers = early.streaming_input(self.name, pick) if streamed else early.logits(self.name, pick)
            if streamed:
                hidden, weight, scale = layers
                ops.sled_evolve_from_hidden(target, hidden, weight, alpha[pick], k, lower_bound[pick],
                                            logit_scale=scale, chunk=chunk, inplace=True)
            else:
                ops.sled_evolve(target, layers, alpha[pick], k, lower_bound[pick], inplace=True)
            del layers
        return None


METHOD = SLED()
