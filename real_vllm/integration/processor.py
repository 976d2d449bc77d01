"""One logits processor for both vLLM runners: the V1 runner (CPU, and GPU with
VLLM_USE_V2_MODEL_RUNNER=0) and Model Runner V2 (the default on CUDA in vLLM 0.32).

vLLM loads it from the ``vllm.logits_processors`` entry point in every engine. It reads
each request's sampler from ``SamplingParams.extra_args`` over the server default
(``additional_config``: ``--sampler`` / ``--additional-config``), keeps per-request
parameters in slot-indexed tensors, and applies the methods in place on the float32 logits.

Where it runs: V2 calls it before temperature, min-p and top-k/top-p; in V1 it is
argmax-invariant (EDT only rescales a row), so it runs after vLLM's temperature and min-p
and before top-k/top-p, and is skipped when the whole batch is greedy. With vLLM's own
temperature left at 1.0 (the default), both places see the same logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsProcessor as V2LogitsProcessor,
)

from real_vllm.integration.state import SlotTable
from real_vllm.methods import SamplerRequest, edt, parse_sampler_args

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import (
        LogitsContext,
        LogitsProcRequestState,
    )


def server_defaults(vllm_config: VllmConfig) -> dict[str, Any]:
    """The sampler settings in ``additional_config``, validated (a bad one stops start-up)."""
    extra = dict(getattr(vllm_config, "additional_config", None) or {})
    defaults = {k: v for k, v in extra.items() if k == "sampler" or k.startswith("edt_")}
    try:
        parse_sampler_args(defaults)
    except ValueError as e:
        raise ValueError(f"real_vllm: bad server-wide sampler setting: {e}") from None
    return defaults


class RealVllmLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """EDT (and the later methods) as a vLLM logits processor."""

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        self.defaults = server_defaults(vllm_config)
        if len(runner_args) == 1:  # Model Runner V2: (req_states,)
            req_states: LogitsProcRequestState = runner_args[0]
            device, pin, num_slots = req_states.device, False, req_states.max_num_reqs
            self.runner = "v2"
        else:  # V1: (device, is_pin_memory)
            device, pin = runner_args
            num_slots = vllm_config.scheduler_config.max_num_seqs
            self.runner = "v1"
        self.slots = SlotTable(num_slots, device, pin_memory=pin and device.type != "cpu")

    # ----------------------------------------------------------------- both runners

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        parse_sampler_args(sampling_params.extra_args)

    def _request(self, params: SamplingParams) -> SamplerRequest:
        return parse_sampler_args(params.extra_args, self.defaults)

    def _apply_rows(self, logits: torch.Tensor, rows) -> torch.Tensor:
        """Run the methods on ``logits``; ``rows(column)`` gives each row's parameters."""
        if not logits.is_contiguous():
            logits = logits.contiguous()
        edt.apply_(logits, rows("edt_t0"), rows("edt_n"), rows("edt_theta"))
        return logits

    # ----------------------------------------------------------------- V1 runner

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.clear(index)
        for index, params, _prompt_ids, _output_ids in batch_update.added:
            self.slots.set(index, self._request(params))
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

    # ----------------------------------------------------------------- the step

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        if ctx is None:  # V1: row i is persistent-batch slot i
            num_rows = logits.shape[0]
            if not self.slots.runs["edt"][:num_rows].any():
                return logits
            self.slots.flush()
            return self._apply_rows(logits, lambda c: self.slots.column(c)[:num_rows])
        # V2: rows map to slots through the context; the host-side mapping decides
        # whether there is work without a device sync.
        if not self.slots.runs["edt"][ctx.idx_mapping_np].any():
            return logits
        idx = ctx.expanded_idx_mapping
        return self._apply_rows(logits, lambda c: self.slots.column(c)[idx])
