"""REAL sampling: Residual Entropy from Asymptotic Line.

Chang et al., "REAL Sampling: Boosting Factuality and Diversity of Open-Ended Generation via
Asymptotic Entropy", arXiv 2406.07735 (TACL 2025); the maths and defaults: docs/algorithms.md
§2.2 (the threshold) and §3 (the nucleus). Per step, a small THF model reads the last
``window`` tokens and forecasts the residual entropy d; the threshold is
p_t = min(1, p0 * exp(-d / decay_temperature)) and the nucleus of threshold p_t is kept on the
served model's own logits. Where the LLM
is more uncertain than an ideal model would be (large d), the nucleus shrinks. With
decay_temperature -> inf, p_t = p0: plain top-p. A decay_temperature of at least
TOP_P_DECAY (1e9) is taken as infinite and skips the THF forward: exp(-d / 1e9) rounds to 1.0
in float32 for every d below 29 nats, and d is an entropy difference (at most ln V, about
12 nats, for a THF that forecasts entropies of the served vocabulary).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from real_vllm import ops
from real_vllm.methods.base import Method, Stage
from real_vllm.methods.params import require_number
from real_vllm.thf.curves import threshold

logger = logging.getLogger("real_vllm")


TOP_P_DECAY = 1e9
# Server settings (--real-thf, --real-retokenize), not request parameters.
SERVER_KEYS = ("real_thf", "real_retokenize")


@dataclass(frozen=True)
class REALConfig:
    """REAL parameters. Defaults: p0 = 1.0 and decay_temperature = 4.0, the top of the paper's
    sweep {0.5, 0.7, 1, 2, 3, 4} (its human evaluation used 2.0). With the THF shipped for the
    default model, 2.0 degenerates (p_t mostly 0.1-0.5: seeded samples repeat, long replies
    loop); in the quality run (benchmarks/results/quality_intel-r-xeon-r-processor-2cores.md, spaCy
    NER) decay 4 is more factual and more diverse than decay 2 on wiki (NE_ER 0.698 vs 0.775,
    distinct-4 0.907 vs 0.691) and as accurate but more diverse on trivia (accuracy 0.115 vs
    0.120, distinct answers 0.930 vs 0.810); against top-p at equal diversity it is within noise
    (wiki factuality gain +0.014 [-0.074, +0.114], 90% interval, test split)."""

    p0: float = 1.0  # real_p0: the threshold where the THF predicts no excess entropy, (0, 1]
    decay_temperature: float = 4.0  # real_decay_temperature: > 0; larger = closer to top-p(p0)

    PARAMS = {"real_p0": "p0", "real_decay_temperature": "decay_temperature"}
    # p0 = 1 at top-p decay: p_t = 1 keeps every token, and no THF forward is needed.
    IDENTITY = {"real_p0": 1.0, "real_decay_temperature": TOP_P_DECAY}

    def __post_init__(self):
        object.__setattr__(self, "p0", require_number("real_p0", self.p0, gt=0, le=1))
        object.__setattr__(
            self,
            "decay_temperature",
            require_number("real_decay_temperature", self.decay_temperature, gt=0),
        )


class REAL(Method):
    name = "real"
    stage = Stage.TRUNCATION
    config = REALConfig
    replaces = {"top_p": "REAL's nucleus replaces top_p (real_p0 with real_decay_temperature 1e9 is top-p(real_p0))"}

    def __init__(self):
        self._warned_no_thf = False

    def apply(self, logits: torch.Tensor, step) -> torch.Tensor:
        """Mask each row to its nucleus of threshold p_t; returns p_t [B]."""
        top_p = self.thresholds(step)
        ops.top_p_mask(logits, top_p, inplace=True)
        return top_p

    def thresholds(self, step) -> torch.Tensor:
        """p_t of every row: 1 for rows of other requests (the identity columns), p0 for REAL rows
        at top-p decay (>= TOP_P_DECAY: no THF), the THF's forecast on the row's window for the
        others, in one batched forward. What needs the THF is decided per request on the host;
        the forward covers every row when every request needs it (no index at all), else,
        without drafts, the requests that need it, else (drafts in a mixed batch: rows map to
        requests on the device only) every row, the forecast kept where the row's decay asks
        for one."""
        p0, decay = step.column("real_p0"), step.column("real_decay_temperature")
        forecast = step.runs("real") & (step.host_column("real_decay_temperature") < TOP_P_DECAY)
        if not forecast.any():
            return p0
        if not step.forecaster_loaded:
            if not self._warned_no_thf:
                logger.error("real_vllm: REAL requested but no THF checkpoint is loaded "
                             "(--real-thf PATH); those requests get plain top-p(real_p0)")
                self._warned_no_thf = True
            return p0
        if forecast.all():
            return threshold(step.residual_entropy(), p0, decay)
        if not step.has_drafts:  # a row is a request
            rows = np.flatnonzero(forecast)
            index = step.to_device(rows)
            thresholds = p0.clone()
            thresholds[index] = threshold(step.residual_entropy(rows, index), p0[index], decay[index])
            return thresholds
        every = threshold(step.residual_entropy(), p0, decay)
        return torch.where(decay < TOP_P_DECAY, every, p0)


METHOD = REAL()
