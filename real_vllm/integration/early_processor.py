"""SLED and DoLa as a vLLM logits processor (both runners), fed by the early-layer tap.

The wrapper model (early_models.py) leaves the sampled rows' early hidden states in a
per-process tap (tap.py) when it computes logits; this processor takes them in the same step
and runs the early-layer methods on their rows. The methods change which token is most likely,
so in the V1 runner this processor is not argmax-invariant: it runs before vLLM's penalties
and temperature (and EDT/REAL, which the other processor applies afterwards), also for greedy
batches. Rows of other requests are not touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from real_vllm.integration import early_models
from real_vllm.integration.slot_processor import SlotLogitsProcessor
from real_vllm.integration.step import ProcessorStep
from real_vllm.integration.tap import EarlyInput, take_early_rows
from real_vllm.methods import METHODS

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger("real_vllm")


class EarlyLayerLogitsProcessor(SlotLogitsProcessor):
    """SLED and DoLa rows of the batch, from the early-layer tap."""

    METHODS = tuple(m for m in METHODS if m.reads_early_layers)
    PART = "early"

    def __init__(self, vllm_config: VllmConfig, *runner_args):
        super().__init__(vllm_config, *runner_args)
        config = vllm_config.model_config.hf_config
        self.layers = {"sled": getattr(config, early_models.SLED_LAYERS, None),
                       "dola": getattr(config, early_models.DOLA_LAYERS, None)}
        self.normed = {"sled": bool(getattr(config, early_models.SLED_NORM, False)),
                       "dola": bool(getattr(config, early_models.DOLA_NORM, False))}
        self._warned_no_tap = False

    def is_argmax_invariant(self) -> bool:
        return False

    def _step(self, logits: torch.Tensor, ctx) -> ProcessorStep:
        num_rows, vocab = logits.shape
        tap = take_early_rows(num_rows)  # always taken: never reused next step
        early = None if tap is None else EarlyInput(tap, self.layers, self.normed, vocab)
        return ProcessorStep(self.slots, num_rows, ctx, self.device, early=early)

    def _ready(self, step: ProcessorStep) -> bool:
        if step.early is None:
            if not self._warned_no_tap:
                logger.error("real_vllm: SLED/DoLa rows but no early-layer hidden states this step "
                             "(is the model the early-layer wrapper?); those rows sample plainly")
                self._warned_no_tap = True
            return False
        return True
