"""What a per-request decoding method is, to the logits processors that run it.

A method is one file in this package: a frozen config dataclass (its request parameters, their
validation, and the *identity* value of each: the value at which the method leaves a row
alone) and a ``Method`` subclass whose ``apply`` is the method's per-step policy, built from
ops. The package discovers every module that defines ``METHOD`` (real_vllm/methods/__init__.py);
the processors keep one slot-table column per request parameter and call ``apply`` in stage
order on the float32 logits of each engine step. Nothing here knows vLLM: what a method needs
of the step (its rows, its parameter columns, the THF's forecast, the early layers) comes in a
``Step``, which the integration layer implements.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import numpy as np
import torch


class Stage(enum.IntEnum):
    """Where a method runs; a sampler runs at most one method of each stage, in this order."""

    EARLY_LAYERS = 0  # replaces the logits from early layers: before vLLM's penalties (not argmax-invariant)
    TEMPERATURE = 1  # rescales each row
    TRUNCATION = 2  # masks each row to a set that keeps its top-1 token


class Step(Protocol):
    """One engine step as a processor hands it to a method (real_vllm.integration.step.Step).

    Rows are the logits rows; requests are the step's requests (a request owns one row, or 1 +
    its drafts under speculative decoding). Host arrays never need a device sync."""

    num_rows: int
    has_drafts: bool  # rows and requests differ: their mapping is on the device only

    def runs(self, method: str) -> np.ndarray:
        """Per request (host bool): whether it runs ``method``."""

    def host_column(self, name: str) -> np.ndarray:
        """Per request (host float32): its value of request parameter ``name``."""

    def column(self, name: str) -> torch.Tensor:
        """Per row (device float32): the value of ``name``; rows of requests that do not run
        the method hold its identity value."""

    def rows(self, method: str) -> np.ndarray:
        """Host indices of the rows that run ``method`` (under drafts: one device sync)."""

    def row_values(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Host values of ``name`` at those rows."""

    def to_device(self, host: np.ndarray) -> torch.Tensor:
        """A host index array on the logits' device, without blocking the host."""

    def residual_entropy(self, rows: np.ndarray | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """REAL: the THF's residual entropy d at ``rows`` (host; ``index`` the same on the
        device), or at every row when both are None."""

    @property
    def forecaster_loaded(self) -> bool:
        """REAL: whether a THF is loaded (else residual_entropy cannot be called)."""

    @property
    def early(self) -> Any:
        """SLED/DoLa: the early layers of this step's rows (integration.tap.EarlyInput)."""


class Method:
    """One decoding method. Subclasses set the class attributes and implement ``apply``."""

    name: ClassVar[str]  # the sampler-name part and the prefix of its request parameters
    stage: ClassVar[Stage]
    config: ClassVar[type]  # frozen dataclass with PARAMS {key: field} and IDENTITY {key: value}
    # vLLM sampling parameters this method replaces -> what to send instead (refused with it:
    # methods.check_vllm_params)
    replaces: ClassVar[dict[str, str]] = {}
    # A temperature-stage method: how a request asks it for a fixed temperature, so that a
    # vLLM temperature can be moved in front of a later stage's method.
    fixed_temperature: ClassVar[str | None] = None

    @property
    def reads_early_layers(self) -> bool:
        return self.stage is Stage.EARLY_LAYERS

    def columns(self) -> dict[str, float]:
        """Slot-table columns: request parameter -> identity value."""
        return dict(self.config.IDENTITY)

    def slot_values(self, config) -> dict[str, float]:
        """The column values of a request that runs this method with ``config``."""
        return {key: float(getattr(config, field)) for key, field in self.config.PARAMS.items()}

    def apply(self, logits: torch.Tensor, step: Step) -> torch.Tensor | None:
        """Transform float32 [rows, V] ``logits`` in place for the rows that run this method;
        return the per-row values worth observing (EDT's T, REAL's p_t) or None."""
        raise NotImplementedError


def row_chunks(logits: torch.Tensor, rows: np.ndarray,
               rows_per_call: int) -> Iterator[tuple[np.ndarray, Any, torch.Tensor]]:
    """Yield (part, pick, target) for ``rows`` of ``logits`` taken ``rows_per_call`` at a time:
    ``part`` the host row indices, ``target`` their logits, a view for a run of consecutive rows,
    else gathered (and written back after the caller's in-place update); ``pick`` a slice or a
    device index tensor that selects the same rows of the caller's other per-row inputs. Bounds
    the working memory of methods that hold [L, rows, V] tensors."""
    for start in range(0, len(rows), rows_per_call):
        part = rows[start:start + rows_per_call]
        consecutive = int(part[-1]) - int(part[0]) + 1 == len(part)
        if consecutive:
            pick = slice(int(part[0]), int(part[-1]) + 1)
            yield part, pick, logits[pick]
        else:
            pick = torch.from_numpy(np.ascontiguousarray(part)).to(logits.device)
            target = logits.index_select(0, pick)
            yield part, pick, target
            logits.index_copy_(0, pick, target)
