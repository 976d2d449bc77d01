"""EDT and REAL as one vLLM logits processor, for both runners (slot_processor.py).

vLLM loads it from the ``vllm.logits_processors`` entry point in every engine. It reads
each request's sampler from ``SamplingParams.extra_args`` over the server default
(``additional_config``: ``--sampler`` / ``--additional-config``), keeps per-request
parameters in slot-indexed tensors, and applies the methods of the temperature and
truncation stages in place on the float32 logits: EDT's temperature, then REAL's nucleus.

Where it runs: V2 calls it before temperature, min-p and top-k/top-p; in V1 it is
argmax-invariant (EDT rescales a row, REAL's nucleus keeps the top-1 token), so it runs
after vLLM's temperature and min-p and before top-k/top-p, and is skipped when the whole
batch is greedy. With vLLM's own temperature and top-p left at 1.0 (the defaults), both
places see the same logits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from real_vllm.integration import frontend, observability
from real_vllm.integration.slot_processor import SlotLogitsProcessor
from real_vllm.integration.step import ProcessorStep
from real_vllm.integration.windows import SlidingReader, WindowReader
from real_vllm.methods import METHODS, SAMPLERS, check_vllm_params, parse_sampler_args
from real_vllm.thf.retokenize import TextHistory

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

logger = logging.getLogger("real_vllm")


class RealVllmLogitsProcessor(SlotLogitsProcessor):
    """The methods that do not read early layers (EDT, REAL) as a vLLM logits processor."""

    METHODS = tuple(m for m in METHODS if not m.reads_early_layers)
    PART = "edt_real"

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        super().__init__(vllm_config, *runner_args)
        self._thf_status = "no THF checkpoint (--real-thf PATH)"
        self.thf = self._load_thf(vllm_config)
        self.windows = self.sliding = None
        if self.thf is not None and self.thf.incremental:
            spec = getattr(vllm_config, "speculative_config", None)
            self.sliding = SlidingReader(self.thf, len(self.slots.tokens), self.device, self.req_states,
                                         getattr(spec, "num_speculative_tokens", None))
            self.slots.followers.append(self.sliding)
        elif self.thf is not None:
            self.windows = WindowReader(self.thf.context, self.device, self.req_states, self.thf.retokenizer)
        observability.log_startup_summary(vllm_config, self.defaults, self.thf, self._thf_status)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Also vLLM's temperature/top_p/min_p against EDT and REAL."""
        super().validate_params(sampling_params)
        args = sampling_params.extra_args
        defaults = frontend.SERVED.get("defaults") or {}
        check_vllm_params(parse_sampler_args(args, defaults), sampling_params.temperature, sampling_params.top_p,
                          sampling_params.min_p, from_server="sampler" not in (args or {}) and "sampler" in defaults)

    def _load_thf(self, vllm_config: VllmConfig):
        """The THF for REAL rows. A THF the user named (--real-thf, $REAL_VLLM_THF) must load;
        the shipped one (trained for the default model's tokenizer) is used when it fits the
        served model, else REAL is unavailable, which is an error only for a REAL default."""
        from real_vllm.thf.runtime import THFRuntime, TokenizerMismatch, resolve_checkpoint

        extra = getattr(vllm_config, "additional_config", None) or {}
        path, chosen = resolve_checkpoint(extra.get("real_thf"))
        retokenize = extra.get("real_retokenize", False)
        if not isinstance(retokenize, bool):
            raise ValueError(f"real_vllm: real_retokenize must be true or false, got {retokenize!r}")
        real_default = "real" in SAMPLERS[self.defaults.get("sampler", "none")]
        if path is None:
            if real_default:
                raise ValueError(
                    "real_vllm: --sampler real needs a THF checkpoint: pass --real-thf PATH "
                    "(train one with `real-vllm thf train`, see the README)"
                )
            return None
        try:
            thf = THFRuntime.load(path, self.device, tokenizer=vllm_config.model_config.tokenizer,
                                  retokenize=retokenize)
        except TokenizerMismatch:
            if chosen or real_default:
                raise
            self._thf_status = (f"the shipped THF ({path}) is for another tokenizer than the served "
                                f"model's; REAL needs --real-thf or --real-retokenize")
            return None
        self._thf_status = (f"{path} ({'given' if chosen else 'shipped'}), its tokenizer in {path}, "
                            f"served tokenizer {vllm_config.model_config.tokenizer}")
        if thf.retokenizer is not None:
            logger.info("real_vllm: REAL re-tokenises the served text with the THF's tokenizer (%s)", path)
        return thf

    @property
    def _retokenizer(self):
        """The cross-tokenizer path's Retokenizer, None when REAL reads the served ids directly."""
        return self.thf.retokenizer if self.thf is not None else None

    def _tokens(self, prompt_ids, output_ids):
        # output_ids is vLLM's live list: REAL reads the newest tokens from it each step.
        if self._retokenizer is not None:
            return (prompt_ids or [], output_ids, TextHistory())
        return (prompt_ids or [], output_ids)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        runs = super().add_request(req_idx, sampling_params)
        if self._retokenizer is not None:
            self.slots.tokens[req_idx] = TextHistory()  # V2: the tokens stay in the runner
        return runs

    def _request(self, params: SamplingParams):
        request = super()._request(params)
        self.metrics.request(request.sampler)
        return request

    def is_argmax_invariant(self) -> bool:
        return True

    def _step(self, logits: torch.Tensor, ctx) -> ProcessorStep:
        forecaster = self._residual_entropy if self.thf is not None else None
        return ProcessorStep(self.slots, logits.shape[0], ctx, self.device, residual_entropy=forecaster)

    def _residual_entropy(self, step: ProcessorStep, rows: np.ndarray | None, index: torch.Tensor | None):
        """The THF's d on the windows of ``rows`` (host; ``index``: the same on the device), or
        of every row when both are None."""
        with self.metrics.timed("thf"):
            if self.sliding is not None:
                return self.thf.residual_entropy_of(self.sliding.curve_params(step, rows, index))
            return self.thf.residual_entropy(*self.windows.windows(step, rows, index))
