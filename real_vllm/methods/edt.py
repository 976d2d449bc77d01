"""EDT: entropy-based dynamic temperature.

Zhang et al., "EDT: Improving Large Language Models' Generation by Entropy-based Dynamic
Temperature Sampling", arXiv 2403.14541; the maths and defaults: docs/algorithms.md §1. Per
row, on the raw logits l:

    H = entropy(softmax(l));  T = t0 * max(n ** (theta / H), MIN_SCALE);  l' = l / T

A confident step (low H) is sampled almost greedily, an uncertain one near t0. theta = 0 is
exactly plain temperature t0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from real_vllm import ops
from real_vllm.methods.base import Method, Stage
from real_vllm.methods.params import require_number

MIN_SCALE = 1e-5  # the paper's floor on n ** (theta / H)


@dataclass(frozen=True)
class EDTConfig:
    """EDT parameters, with the request-field name of each in the docs.

    Defaults: n = 0.8 from the paper; t0 = 1.0 and theta = 1.0 (the paper tunes both per
    task; the public re-implementation used theta = 3.0 with t0 in {0.4, 0.6, 1.5}).
    """

    t0: float = 1.0  # edt_t0: the temperature reached at high entropy, > 0
    n: float = 0.8  # edt_n: base of the entropy scaling, in (0, 1)
    theta: float = 1.0  # edt_theta: how fast T falls with confidence, >= 0 (0 = plain t0)

    PARAMS = {"edt_t0": "t0", "edt_n": "n", "edt_theta": "theta"}
    # theta = 0 makes T = t0 on every row (one-hot rows included), and t0 = 1 divides by 1.
    IDENTITY = {"edt_t0": 1.0, "edt_n": 0.8, "edt_theta": 0.0}

    def __post_init__(self):
        object.__setattr__(self, "t0", require_number("edt_t0", self.t0, gt=0))
        object.__setattr__(self, "n", require_number("edt_n", self.n, gt=0, lt=1))
        object.__setattr__(self, "theta", require_number("edt_theta", self.theta, ge=0))


class EDT(Method):
    name = "edt"
    stage = Stage.TEMPERATURE
    config = EDTConfig
    replaces = {"temperature": "EDT sets the temperature: use edt_t0 (edt_theta 0 is a fixed temperature edt_t0)"}
    fixed_temperature = "with edt_theta 0 and edt_t0 = the temperature"

    def apply(self, logits: torch.Tensor, step) -> torch.Tensor:
        """Every row at once: rows of other requests hold the identity columns. Returns T [B]."""
        _, temperature = ops.apply_edt(logits, step.column("edt_t0"), step.column("edt_n"),
                                       step.column("edt_theta"), MIN_SCALE, inplace=True)
        return temperature


METHOD = EDT()
