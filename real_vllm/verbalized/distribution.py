"""A verbalized distribution and the draw from it (docs/algorithms.md §6.3): by the stated
weights, uniformly, or by the softmax of the weights."""

from __future__ import annotations

import bisect
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from real_vllm.verbalized.errors import VSParseError
from real_vllm.verbalized.options import check_choice

WEIGHT_MODES = ("weight", "uniform", "softmax")
# How far the probabilities may sum from 1: a few ulps of normalisation error, no more.
SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Item:
    """One candidate: its text, its normalised probability, and the value the model wrote."""

    text: str
    probability: float
    stated: Any = None

    def to_dict(self) -> dict:
        stated = self.stated
        try:
            json.dumps(stated, allow_nan=False)
        except (TypeError, ValueError):
            stated = repr(stated)
        return {"text": self.text, "probability": self.probability, "stated": stated}


@dataclass(frozen=True)
class Distribution:
    """A verbalized distribution: items sorted by probability (descending), summing to 1.

    ``repairs`` lists, in words, everything the parser had to fix; empty when the answer was
    clean. ``meta`` records how it was obtained (method, k, tau, constraint, finish reason ...).
    """

    items: tuple[Item, ...]
    repairs: tuple[str, ...] = ()
    reasoning: str | None = None
    raw: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.items:
            raise VSParseError("a distribution needs at least one item")
        probs = [it.probability for it in self.items]
        if any(not math.isfinite(p) or p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=SUM_TOLERANCE):
            raise ValueError(f"item probabilities must be finite, >= 0 and sum to 1, got {probs}")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def texts(self) -> list[str]:
        return [it.text for it in self.items]

    @property
    def probabilities(self) -> list[float]:
        return [it.probability for it in self.items]

    def argmax(self) -> Item:
        """The most probable item (the first one on ties, i.e. the model's earlier one)."""
        return self.items[0]

    def weights(self, mode: str = "weight") -> list[float]:
        """Draw weights: the probabilities ("weight"), equal ("uniform") or softmax(probabilities)."""
        check_choice(mode, "mode", WEIGHT_MODES)
        if mode == "weight":
            return self.probabilities
        if mode == "uniform":
            return [1.0 / len(self.items)] * len(self.items)
        exps = [math.exp(p) for p in self.probabilities]
        total = sum(exps)
        return [e / total for e in exps]

    def sample_index(self, seed: int | None = None, mode: str = "weight") -> int:
        """Index of one item drawn with :meth:`weights`; ``seed`` makes the draw reproducible."""
        weights = self.weights(mode)
        rng = random.Random(seed)
        cumulative = []
        total = 0.0
        for w in weights:
            total += w
            cumulative.append(total)
        # bisect_right skips zero-weight items: u lands past every cumulative value it equals.
        index = bisect.bisect_right(cumulative, rng.random() * total)
        if index >= len(weights):  # u * total rounded up to the last cumulative value
            index = max(i for i, w in enumerate(weights) if w > 0)
        return index

    def sample(self, seed: int | None = None, mode: str = "weight") -> Item:
        """One item drawn from the distribution (see :meth:`weights` for ``mode``)."""
        return self.items[self.sample_index(seed, mode)]

    def to_dict(self) -> dict:
        return {
            "items": [it.to_dict() for it in self.items],
            "repairs": list(self.repairs),
            "reasoning": self.reasoning,
            "meta": dict(self.meta),
        }
