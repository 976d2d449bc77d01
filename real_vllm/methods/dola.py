"""DoLa: Decoding by Contrasting Layers.

Chuang et al., "DoLa: Decoding by Contrasting Layers Improves Factuality in Large Language
Models", ICLR 2024, arXiv 2309.03883 (docs/algorithms.md §5). Per step the premature layer M is the
candidate layer whose next-token distribution diverges most from the final one, and the logits
become log q_N - log q_M on the tokens with q_N >= relative_top * max q_N (-inf elsewhere).
The paper recommends a repetition penalty of 1.2 with it (vLLM's own penalty applies after
this contrast, as transformers' logits processors do after ``_dola_select_contrast``).

Which divergence (``dola_divergence``): "authors", the default, is what the authors' code
(voidism/DoLa) and transformers' ``generate(dola_layers=...)`` compute and what the published
numbers come from: 1/2 [KL(m || q_N) + KL(m || q_j)] / V with m = (q_N + q_j) / 2 (their
``F.kl_div(log q, m).mean(-1)``). "jsd" is the paper's Jensen-Shannon divergence, which is
bounded by ln 2 and saturates there on early layers taken without the final norm (the default,
as in both originals), leaving the layer choice to rounding. See reference.dola_contrast.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

import numpy as np

from real_vllm import ops
from real_vllm.methods.base import Method, Stage, row_chunks
from real_vllm.methods.params import _show, require_number


class Divergence(float, enum.Enum):
    """dola_divergence: a float subclass, so a request's choice sits in a float32 slot column
    (0 = authors, 1 = jsd) like every other per-request parameter."""

    AUTHORS = 0.0
    JSD = 1.0

    def __str__(self) -> str:
        return self.name.lower()


def require_divergence(name: str, value) -> Divergence:
    if isinstance(value, Divergence):
        return value
    choices = [str(d) for d in Divergence]
    if isinstance(value, str) and value.strip().lower() in choices:
        return Divergence[value.strip().upper()]
    raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {_show(value)}")


@dataclass(frozen=True)
class DoLaConfig:
    relative_top: float = 0.1  # dola_relative_top: the plausibility cut, in (0, 1]
    divergence: Divergence = Divergence.AUTHORS  # dola_divergence: "authors" or "jsd"

    PARAMS = {"dola_relative_top": "relative_top", "dola_divergence": "divergence"}
    # Rows of other requests are never touched (the early-layer processor picks DoLa's rows);
    # these fill their slots (divergence: a Divergence code).
    IDENTITY = {"dola_relative_top": 1.0, "dola_divergence": 0.0}

    def __post_init__(self):
        object.__setattr__(
            self, "relative_top", require_number("dola_relative_top", self.relative_top, gt=0, le=1)
        )
        object.__setattr__(self, "divergence", require_divergence("dola_divergence", self.divergence))


def candidate_layers(num_layers: int, which, tied_embeddings: bool) -> list[int]:
    """DoLa's candidate premature layers: 'low', 'high' (the paper's buckets) or a list.

    As transformers' ``_dola_decoding`` (4.46.3, src/transformers/generation/utils.py lines
    2580-2617): start = 0 without tied embeddings; with them (layer 0's logits would be the
    embedding's own) start = 2, or 1 for a 2-layer model, 0 for a 1-layer one.
    'low' = range(start, N // 2, 2) ([start] when start == N // 2), 'high' = range(N // 2, N, 2);
    for N > 40 the buckets are range(start, 20, 2) and range(N - 20, N, 2).
    """
    n = num_layers
    start = 0 if not tied_embeddings else 2 if n > 2 else 1 if n == 2 else 0
    if which == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    if which == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    return list(which)


def rows_per_chunk(num_layers: int, vocab: int, early_dtype_bytes: int = 4, budget: int | None = None) -> int:
    """Rows of a DoLa step to take at once so that its working memory stays under ``budget``:
    per row, the early logits [L, V] in float32 (plus their lm_head output when that is another
    dtype), a copy of the row's logits (a mixed batch gathers them) and ops.dola_contrast's
    temporaries (ops.DOLA_ROW_TEMPS float32 vectors)."""
    extra = early_dtype_bytes if early_dtype_bytes != 4 else 0
    per_row = vocab * (num_layers * (4 + extra) + 4 * (1 + ops.DOLA_ROW_TEMPS))
    return max(1, int(ops.WORKING_MEMORY if budget is None else budget) // max(1, per_row))


class DoLa(Method):
    name = "dola"
    stage = Stage.EARLY_LAYERS
    config = DoLaConfig

    def apply(self, logits: torch.Tensor, step) -> None:
        """Replace the DoLa rows of float32 [B, V] ``logits`` in place by the contrast with their
        premature layer, in row chunks of rows_per_chunk() (ops.dola_contrast's own row blocks
        follow ops.WORKING_MEMORY as it is now)."""
        rows = step.rows(self.name)
        if not len(rows):
            return None
        early, vocab = step.early, logits.shape[1]
        rows_per_call = rows_per_chunk(early.num_layers(self.name), vocab, early.logits_dtype_bytes)
        relative_top, codes = step.column("dola_relative_top"), step.column("dola_divergence")
        for part, pick, target in row_chunks(logits, rows, rows_per_call):
            chosen = np.unique(step.row_values("dola_divergence", part))
            # one divergence for the chunk as a name (the common case), else per-row codes
            divergence = str(Divergence(float(chosen[0]))) if len(chosen) == 1 else codes[pick]
            ops.dola_contrast(target, early.logits(self.name, pick), relative_top[pick], divergence,
                              inplace=True, budget=ops.WORKING_MEMORY)
        return None


METHOD = DoLa()
