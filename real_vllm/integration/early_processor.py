"""SLED and DoLa as a vLLM logits processor (both runners), fed by the early-layer tap.

The wrapper model (early_layers.py) leaves the sampled rows' early hidden states in a
per-process tap when it computes logits; this processor takes them in the same step and
replaces the logits of SLED/DoLa rows. The methods change which token is most likely, so in
the V1 runner this processor is not argmax-invariant: it runs before vLLM's penalties and
temperature (and EDT/REAL, which the other processor applies afterwards), also for greedy
batches. Rows of other requests are not touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsProcessor as V2LogitsProcessor,
)

from real_vllm.integration import early_layers
from real_vllm.integration.processor import server_defaults
from real_vllm.integration.state import EARLY_COLUMNS, SlotTable
from real_vllm.methods import SamplerRequest, dola, parse_sampler_args, sled

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

logger = logging.getLogger("real_vllm")


class EarlyLayerLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """SLED and DoLa rows of the batch, from the early-layer tap."""

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        self.defaults = server_defaults(vllm_config)
        config = vllm_config.model_config.hf_config
        self.sled_layers = getattr(config, early_layers.SLED_LAYERS, None)
        self.dola_layers = getattr(config, early_layers.DOLA_LAYERS, None)
        self.normed = {"sled": bool(getattr(config, early_layers.SLED_NORM, False)),
                       "dola": bool(getattr(config, early_layers.DOLA_NORM, True))}
        if len(runner_args) == 1:  # Model Runner V2: (req_states,)
            req_states = runner_args[0]
            device, pin, num_slots = req_states.device, False, req_states.max_num_reqs
        else:  # V1: (device, is_pin_memory)
            device, pin = runner_args
            num_slots = vllm_config.scheduler_config.max_num_seqs
        self.device = torch.device(device)
        self.slots = SlotTable(num_slots, device, pin_memory=pin and self.device.type != "cpu", columns=EARLY_COLUMNS)
        self._warned_no_tap = False

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request = parse_sampler_args(sampling_params.extra_args)
        early_layers.check_served(request.sampler)

    def _request(self, params: SamplingParams) -> SamplerRequest:
        return parse_sampler_args(params.extra_args, self.defaults)

    # ----------------------------------------------------------------- V1 runner

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.clear(index)
        for index, params, _, _ in batch_update.added:
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
        num_rows = logits.shape[0]
        tap = early_layers.take_early_rows(num_rows)  # always taken: never reused next step
        host_slots = np.arange(num_rows) if ctx is None else ctx.idx_mapping_np
        run = {m: self.slots.runs[m][host_slots] for m in ("sled", "dola")}
        if not (run["sled"].any() or run["dola"].any()):
            return logits
        if tap is None:
            if not self._warned_no_tap:
                logger.error("real_vllm: SLED/DoLa rows but no early-layer hidden states this step "
                             "(is the model the early-layer wrapper?); those rows sample plainly")
                self._warned_no_tap = True
            return logits
        if ctx is None:
            self.slots.flush()
            column = lambda name: self.slots.column(name)[:num_rows]  # noqa: E731
        else:
            column = lambda name: self.slots.column(name)[ctx.expanded_idx_mapping]  # noqa: E731
        if not logits.is_contiguous():
            logits = logits.contiguous()
        vocab = logits.shape[1]
        for method, layers in (("sled", self.sled_layers), ("dola", self.dola_layers)):
            if not run[method].any():
                continue
            every = bool(run[method].all())
            rows = None if every else torch.from_numpy(np.flatnonzero(run[method])).to(logits.device)
            target = logits if every else logits.index_select(0, rows)
            params = {n: column(n) if every else column(n)[rows] for n in EARLY_COLUMNS[method]}
            if method == "sled":
                sled.apply_(target, tap.sled_input(layers, rows, self.normed["sled"]), params["sled_alpha"],
                            params["sled_k"], params["sled_lower_bound"])
            else:
                early = tap.logits_of(layers, rows, self.normed["dola"], vocab)
                dola.apply_(target, early, params["dola_relative_top"])
            if not every:
                logits.index_copy_(0, rows, target)
        return logits
