"""Per-request sampler parameters in slot-indexed tensors (the Model Runner V2 layout).

A slot is a row of the V1 persistent batch or a request slot of Model Runner V2. Slots
whose request does not run a method hold that method's identity parameters, so a kernel
can run over the whole batch without gathering rows (EDT with t0 = 1, theta = 0 divides
by exactly 1).
"""

from __future__ import annotations

import numpy as np
import torch

from real_vllm.methods import SamplerRequest
from real_vllm.methods.base import Method


class SlotTable:
    """Slot-indexed parameters of ``methods``: one float32 column per request parameter, the
    method's identity value in the slots of requests that do not run it."""

    def __init__(self, num_slots: int, device: torch.device, methods: tuple[Method, ...], pin_memory: bool = False):
        self.device = torch.device(device)
        self.methods = methods
        self.runs = {m.name: np.zeros(num_slots, dtype=bool) for m in methods}
        self._host = {
            col: torch.full((num_slots,), ident, dtype=torch.float32, pin_memory=pin_memory)
            for m in methods
            for col, ident in m.columns().items()
        }
        # V1 only: (prompt ids, live output ids) of each slot's request, for REAL's window.
        self.tokens: list[tuple[list[int], list[int]] | None] = [None] * num_slots
        # Per-slot state kept elsewhere that must follow the requests (REAL's THF key/value
        # cache): each gets reset(slot), move(src, dst) and swap(a, b).
        self.followers: list = []
        on_cpu = self.device.type == "cpu"
        self._device = {c: t if on_cpu else t.to(self.device) for c, t in self._host.items()}
        self._dirty = False

    def set(self, slot: int, request: SamplerRequest, tokens=None) -> bool:
        """Store a request's parameters (and, on V1, its token lists) in ``slot``; returns
        whether any method runs."""
        self.tokens[slot] = tokens
        for follower in self.followers:
            follower.reset(slot)
        for method in self.methods:
            config = request.configs.get(method.name)
            self.runs[method.name][slot] = config is not None
            values = method.columns() if config is None else method.slot_values(config)
            for col, value in values.items():
                self._host[col][slot] = value
        self._dirty = True
        return any(r[slot] for r in self.runs.values())

    def clear(self, slot: int) -> None:
        self.set(slot, SamplerRequest())

    def move(self, src: int, dst: int) -> None:
        """V1 one-way move: dst takes src's request, src becomes empty."""
        for runs in self.runs.values():
            runs[dst] = runs[src]
        for t in self._host.values():
            t[dst] = t[src]
        self.tokens[dst] = self.tokens[src]
        for follower in self.followers:
            follower.move(src, dst)
        self.clear(src)

    def swap(self, a: int, b: int) -> None:
        for runs in self.runs.values():
            runs[[a, b]] = runs[[b, a]]
        for t in self._host.values():
            t[[a, b]] = t[[b, a]]
        self.tokens[a], self.tokens[b] = self.tokens[b], self.tokens[a]
        for follower in self.followers:
            follower.swap(a, b)
        self._dirty = True

    def flush(self) -> None:
        """Copy host-side changes to the device (a no-op on CPU, where they are shared)."""
        if self._dirty and self.device.type != "cpu":
            for col, host in self._host.items():
                self._device[col].copy_(host, non_blocking=True)
        self._dirty = False

    def column(self, name: str) -> torch.Tensor:
        return self._device[name]

    def host_column(self, name: str) -> torch.Tensor:
        """The host copy: read it to decide what runs without a device sync."""
        return self._host[name]
