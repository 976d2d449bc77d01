"""One engine step as the methods see it (methods.base.Step), over a processor's slot table.

MRV2 hands every logits row to apply(): under speculative decoding a request owns 1 + its
drafts consecutive rows, mapped to its slot by ctx.expanded_idx_mapping (device). The host has
only the per-request mapping (ctx.idx_mapping_np): LogitsContext carries no host copy of the
expanded mapping and no per-request draft counts (and with adaptive verification the split is
decided on the device). So, as MRV2's own samplers do, what runs is decided per request on the
host, and per-row parameters are gathered on the device. V1: row i is persistent-batch slot i.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from real_vllm.integration.state import SlotTable

if TYPE_CHECKING:
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    from real_vllm.integration.tap import EarlyInput


def to_device(host: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on ``device``: from pinned memory, without blocking the host (the pinned
    copy is fresh, so nothing overwrites it while the copy is queued)."""
    t = torch.from_numpy(np.ascontiguousarray(host)) if isinstance(host, np.ndarray) else host
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class ProcessorStep:
    """The rows of one apply() call and what the methods read of them."""

    def __init__(self, slots: SlotTable, num_rows: int, ctx: LogitsContext | None, device: torch.device,
                 residual_entropy: Callable | None = None, early: EarlyInput | None = None):
        self.slots = slots
        self.num_rows = num_rows
        self.ctx = ctx
        self.device = device
        # The slot of every request of the step, on the host. Every request owns at least one
        # row, so any/all over these equal any/all over the rows.
        self.requests = np.arange(num_rows) if ctx is None else ctx.idx_mapping_np
        self.has_drafts = ctx is not None and num_rows != len(ctx.idx_mapping_np)
        self._residual_entropy = residual_entropy
        self._early = early
        self._row_slots = None
        if ctx is None:
            slots.flush()

    # ------------------------------------------------------------------ what runs (host)

    def runs(self, method: str) -> np.ndarray:
        return self.slots.runs[method][self.requests]

    def runs_any(self, methods) -> bool:
        return any(self.runs(m).any() for m in methods)

    def host_column(self, name: str) -> np.ndarray:
        return self.slots.host_column(name).numpy()[self.requests]

    def row_slots(self) -> np.ndarray:
        """The slot of every row, on the host: the per-request mapping without drafts; with
        drafts ctx.expanded_idx_mapping copied to the host, a device sync (taken only by
        methods that pick rows on the host: SLED, DoLa)."""
        if self._row_slots is None:
            self._row_slots = (self.ctx.expanded_idx_mapping.cpu().numpy() if self.has_drafts
                               else self.requests)
        return self._row_slots

    def rows(self, method: str) -> np.ndarray:
        return np.flatnonzero(self.slots.runs[method][self.row_slots()])

    def row_values(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.slots.host_column(name).numpy()[self.row_slots()[rows]]

    # ------------------------------------------------------------------ per row (device)

    def column(self, name: str) -> torch.Tensor:
        if self.ctx is None:
            return self.slots.column(name)[:self.num_rows]
        return self.slots.column(name)[self.ctx.expanded_idx_mapping]

    def to_device(self, host: np.ndarray) -> torch.Tensor:
        return to_device(host, self.device)

    def rows_of(self, method: str, values: torch.Tensor) -> torch.Tensor | None:
        """The entries of a per-row device tensor that belong to rows running ``method`` (no
        sync): all of them when every request of the step runs it, else the rows of those that
        do, indexed with a host-built index; None with drafts in a mixed batch (rows map to
        requests on the device only)."""
        runs = self.runs(method)
        if runs.all():
            return values
        if self.has_drafts:
            return None
        return values[self.to_device(np.flatnonzero(runs))]

    # ------------------------------------------------------------------ the served model's inputs

    @property
    def forecaster_loaded(self) -> bool:
        return self._residual_entropy is not None

    def residual_entropy(self, rows: np.ndarray | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        return self._residual_entropy(self, rows, index)

    @property
    def early(self) -> EarlyInput | None:
        return self._early
