"""What both of real_vllm's logits processors share: vLLM's two processor APIs over one slot
table, and a step that runs an ordered list of methods.

- V1 runner (CPU, and GPU with VLLM_USE_V2_MODEL_RUNNER=0): __init__(vllm_config, device,
  is_pin_memory), update_state(BatchUpdate) with removed, added and moved rows, apply(logits).
- Model Runner V2 (the default on CUDA in vLLM 0.32): __init__(vllm_config, req_states),
  add_request(slot, params), apply_staged_writes(), apply(logits, ctx).
One class that inherits both base classes passes both loaders.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsProcessor as V2LogitsProcessor,
)

from real_vllm.integration import frontend, observability
from real_vllm.integration.state import SlotTable
from real_vllm.integration.step import ProcessorStep
from real_vllm.methods import SamplerRequest, parse_sampler_args
from real_vllm.methods.base import Method

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import (
        LogitsContext,
        LogitsProcRequestState,
    )


class SlotLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Runs ``METHODS`` (in order) on the rows of the requests that chose them, with their
    parameters in a SlotTable; ``PART`` names the whole apply() in the step-time metric."""

    METHODS: ClassVar[tuple[Method, ...]] = ()
    PART: ClassVar[str] = ""

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        self.defaults = frontend.server_defaults(vllm_config)
        self.req_states: LogitsProcRequestState | None = None
        if len(runner_args) == 1:  # Model Runner V2: (req_states,)
            self.req_states = runner_args[0]
            device, pin, num_slots = self.req_states.device, False, self.req_states.max_num_reqs
        else:  # V1: (device, is_pin_memory)
            device, pin = runner_args
            num_slots = vllm_config.scheduler_config.max_num_seqs
        self.device = torch.device(device)
        self.slots = SlotTable(num_slots, device, self.METHODS, pin_memory=pin and self.device.type != "cpu")
        self.metrics = observability.recorder(vllm_config, self.device)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """At admission (a ValueError is HTTP 400): the request's sampler arguments over the
        server defaults, and whether this server can run its sampler."""
        request = parse_sampler_args(sampling_params.extra_args, frontend.SERVED.get("defaults") or {})
        frontend.check_served(request.sampler)

    def _request(self, params: SamplingParams) -> SamplerRequest:
        return parse_sampler_args(params.extra_args, self.defaults)

    def _tokens(self, prompt_ids, output_ids):
        """What a slot keeps of a V1 request's tokens (nothing, unless a method reads them)."""
        return None

    # ----------------------------------------------------------------- V1 runner

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.clear(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self.slots.set(index, self._request(params), self._tokens(prompt_ids, output_ids))
        for a, b, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                self.slots.swap(a, b)
            else:
                self.slots.move(a, b)

    # ----------------------------------------------------------------- V2 runner

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return self.slots.set(req_idx, self._request(sampling_params))

    def apply_staged_writes(self) -> None:
        self.slots.flush()

    # ----------------------------------------------------------------- a step

    def _step(self, logits: torch.Tensor, ctx: LogitsContext | None) -> ProcessorStep:
        """The step the methods see (subclasses add the served model's inputs)."""
        return ProcessorStep(self.slots, logits.shape[0], ctx, self.device)

    def _ready(self, step: ProcessorStep) -> bool:
        """Whether the step can run once some request runs a method (subclasses check inputs)."""
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        step = self._step(logits, ctx)
        names = [m.name for m in self.METHODS]
        if not step.runs_any(names) or not self._ready(step):
            return logits
        start = time.perf_counter()
        if not logits.is_contiguous():
            logits = logits.contiguous()
        for method in self.METHODS:
            if not step.runs(method.name).any():
                continue
            with self.metrics.timed(method.name):
                values = method.apply(logits, step)
            if values is not None:
                self.metrics.method_rows(method.name, step.rows_of(method.name, values))
        self.metrics.observe_seconds(self.PART, time.perf_counter() - start)
        return logits
