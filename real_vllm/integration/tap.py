"""The early-layer tap: the early hidden states of exactly the rows whose logits vLLM just
computed, handed from the wrapper model's compute_logits (early_models.py) to the early-layer
logits processor in the same step, and the one place that turns them into early logits.

Early logits are never materialised for the whole vocabulary unless a method needs whole
distributions (DoLa): SLED streams them chunk by chunk from the hidden states
(ops.sled_evolve_from_hidden) when lm_head is a plain local matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def project_to_vocab(hidden: torch.Tensor, weight: torch.Tensor, vocab: int, scale: float = 1.0) -> torch.Tensor:
    """float32 ``scale * hidden @ weight[:vocab].T`` for hidden [..., H]: one GEMM that reads
    the weight once, in the weight's dtype (as vLLM's lm_head computes), scaled in place; the only
    other copy is the GEMM's output when the weight is not float32."""
    logits = torch.matmul(hidden.to(weight.dtype), weight[:vocab].T)
    if scale != 1.0:
        logits.mul_(scale)
    return logits.float()


@dataclass
class EarlyRows:
    """The early layers of the rows whose logits compute_logits just returned.

    hidden: [L, R, H] residual streams, layers in ``layers`` order; norm: the model's final
    norm (for the methods that apply it to early layers). Early logits are
    ``scale * hidden @ weight[:V].T`` when lm_head is a plain local matrix (weight is set);
    otherwise (tensor-parallel shards, a quantised head) ``project`` is vLLM's own logits
    path, one vocabulary gather per layer."""

    layers: tuple[int, ...]
    hidden: torch.Tensor
    norm: Callable[[torch.Tensor], torch.Tensor]
    weight: torch.Tensor | None = None
    scale: float = 1.0
    project: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def num_rows(self) -> int:
        return self.hidden.shape[1]

    @property
    def logits_dtype_bytes(self) -> int:
        """Bytes per element of the early logits lm_head makes before they become float32."""
        return (self.weight if self.weight is not None else self.hidden).element_size()

    def hidden_of(self, layers: list[int], rows, normed: bool) -> torch.Tensor:
        """[L', R', H] hidden states of ``layers`` at ``rows``: None (all), a slice or an index
        tensor."""
        index = torch.tensor([self.layers.index(n) for n in layers], device=self.hidden.device)
        h = self.hidden.index_select(0, index)
        if isinstance(rows, slice):
            h = h[:, rows]
        elif rows is not None:
            h = h.index_select(1, rows)
        if normed:
            h = self.norm(h.reshape(-1, h.shape[-1])).reshape(h.shape)
        return h

    def logits_of(self, layers: list[int], rows, normed: bool, vocab: int) -> torch.Tensor:
        """Full early logits [L', R', V] float32: every layer and row in one GEMM, or vLLM's own
        logits path one layer at a time."""
        h = self.hidden_of(layers, rows, normed)
        if self.weight is not None:
            return project_to_vocab(h, self.weight, vocab, self.scale)
        first = self.project(h[0])
        out = torch.empty((h.shape[0], *first.shape), dtype=torch.float32, device=first.device)
        out[0].copy_(first)
        del first
        for i in range(1, h.shape[0]):
            out[i].copy_(self.project(h[i]))
        return out


@dataclass
class EarlyInput:
    """What the early-layer methods read of a step (methods.base.Step.early): the tap's rows,
    with each method's layers and whether its early layers take the final norm."""

    rows: EarlyRows
    layers: dict[str, list[int]]
    normed: dict[str, bool]
    vocab: int

    @property
    def streams_from_hidden(self) -> bool:
        """Whether early logits can be streamed from lm_head's weight (a plain local matrix)."""
        return self.rows.weight is not None

    @property
    def logits_dtype_bytes(self) -> int:
        return self.rows.logits_dtype_bytes

    def num_layers(self, method: str) -> int:
        return len(self.layers[method])

    def streaming_input(self, method: str, rows):
        """(hidden [L, R, H], lm_head weight, logit scale) of ``method``'s layers at ``rows``."""
        return self.rows.hidden_of(self.layers[method], rows, self.normed[method]), self.rows.weight, self.rows.scale

    def logits(self, method: str, rows) -> torch.Tensor:
        """Full early logits [L, R, V] float32 of ``method``'s layers at ``rows``."""
        return self.rows.logits_of(self.layers[method], rows, self.normed[method], self.vocab)


class _Tap:
    """One per process (a worker serves one model): compute_logits fills it, the early-layer
    logits processor empties it in the same step, whichever thread the runner samples on."""

    rows: EarlyRows | None = None


TAP = _Tap()


def take_early_rows(num_rows: int) -> EarlyRows | None:
    """The early rows of this step's logits (once), or None if they do not match."""
    rows, TAP.rows = TAP.rows, None
    return rows if rows is not None and rows.num_rows == num_rows else None
