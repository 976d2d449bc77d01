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
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from real_vllm.integration import early_layers, observability
from real_vllm.integration.processor import SlotLogitsProcessor
from real_vllm.integration.state import EARLY_COLUMNS
from real_vllm.methods import dola, parse_sampler_args, sled

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

logger = logging.getLogger("real_vllm")


class EarlyLayerLogitsProcessor(SlotLogitsProcessor):
    """SLED and DoLa rows of the batch, from the early-layer tap."""

    COLUMNS = EARLY_COLUMNS

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        super().__init__(vllm_config, *runner_args)
        config = vllm_config.model_config.hf_config
        self.sled_layers = getattr(config, early_layers.SLED_LAYERS, None)
        self.dola_layers = getattr(config, early_layers.DOLA_LAYERS, None)
        self.normed = {"sled": bool(getattr(config, early_layers.SLED_NORM, False)),
                       "dola": bool(getattr(config, early_layers.DOLA_NORM, False))}
        self._warned_no_tap = False
        self.metrics = observability.recorder(vllm_config, self.device)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request = parse_sampler_args(sampling_params.extra_args)
        early_layers.check_served(request.sampler)

    def is_argmax_invariant(self) -> bool:
        return False

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        num_rows = logits.shape[0]
        tap = early_layers.take_early_rows(num_rows)  # always taken: never reused next step
        host_slots = self._step_rows(num_rows, ctx)
        run = {m: self.slots.runs[m][host_slots] for m in ("sled", "dola")}
        if not (run["sled"].any() or run["dola"].any()):
            return logits
        if tap is None:
            if not self._warned_no_tap:
                logger.error("real_vllm: SLED/DoLa rows but no early-layer hidden states this step "
                             "(is the model the early-layer wrapper?); those rows sample plainly")
                self._warned_no_tap = True
            return logits
        start = time.perf_counter()
        column = self._columns(num_rows, ctx)
        if not logits.is_contiguous():
            logits = logits.contiguous()
        vocab = logits.shape[1]
        for method, layers in (("sled", self.sled_layers), ("dola", self.dola_layers)):
            rows = np.flatnonzero(run[method])
            if not len(rows):
                continue
            method_start = time.perf_counter()
            # Rows in chunks sized by ops.WORKING_MEMORY (vLLM's memory profiling never runs
            # this processor, so the working memory must stay small whatever the batch).
            if method == "sled":
                step, chunk = sled.plan(len(rows), len(layers), vocab, from_hidden=tap.weight is not None,
                                        logits_dtype_bytes=tap.logits_dtype_bytes)
            else:
                step = dola.rows_per_chunk(len(layers), vocab, tap.logits_dtype_bytes)
            for start in range(0, len(rows), step):
                part = rows[start:start + step]
                # a run of rows is taken as views; other rows are gathered and written back
                run_of_rows = int(part[-1]) - int(part[0]) + 1 == len(part)
                pick = slice(int(part[0]), int(part[-1]) + 1) if run_of_rows else (
                    torch.from_numpy(part).to(logits.device))
                target = logits[pick] if run_of_rows else logits.index_select(0, pick)
                params = {n: column(n)[pick] for n in EARLY_COLUMNS[method]}
                if method == "sled":
                    k = self.slots.host_column("sled_k")[torch.from_numpy(host_slots[part])]  # no device sync
                    sled.apply_(target, tap.sled_input(layers, pick, self.normed["sled"]), params["sled_alpha"], k,
                                params["sled_lower_bound"], chunk=chunk)
                else:
                    codes = np.unique(self.slots.host_column("dola_divergence").numpy()[host_slots[part]])
                    divergence = str(dola.Divergence(float(codes[0]))) if len(codes) == 1 else params["dola_divergence"]
                    dola.apply_(target, tap.logits_of(layers, pick, self.normed["dola"], vocab),
                                params["dola_relative_top"], divergence)
                if not run_of_rows:
                    logits.index_copy_(0, pick, target)
                del target
            self.metrics.observe_seconds(method, time.perf_counter() - method_start)
        self.metrics.observe_seconds("early", time.perf_counter() - start)
        return logits
