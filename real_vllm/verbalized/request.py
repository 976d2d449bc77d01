"""One VS request, whichever client sends it: its checked options (:class:`Plan`) and its
conversation in flight (:class:`Conversation`), turn by turn, to the :class:`Distribution`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from real_vllm.verbalized.distribution import Distribution
from real_vllm.verbalized.errors import VSParseError
from real_vllm.verbalized.options import check_chars, check_k, check_method, check_per_turn, check_tau
from real_vllm.verbalized.parse import candidates
from real_vllm.verbalized.prompts import build_messages, continue_conversation, turn_sizes
from real_vllm.verbalized.repair import RepairRules, to_distribution
from real_vllm.verbalized.schema import answer_max_tokens, answer_regex, answer_schema

# Turn t of a VS-Multi request seeded s is seeded s + SEED_STRIDE * t, so later turns do not
# replay the first turn's noise. Above a million: for request seeds below it (benchmarks number
# them 0, 1, 2 ...), no later turn's seed is any request's first-turn seed.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Plan:
    """A request's options, checked: the prompt's method, k, tau and turns, the answer's bounds,
    the sampling settings and the weight-repair rules."""

    method: str
    k: int
    tau: float | None
    sizes: tuple[int, ...]
    max_text_chars: int
    max_reasoning_chars: int
    temperature: float
    top_p: float
    sampler_args: dict | None
    rules: RepairRules

    @classmethod
    def build(cls, *, method: str, k: int, tau: float | None, m: int | None, max_text_chars: int,
              max_reasoning_chars: int, temperature: float, top_p: float, sampler_args: dict | None,
              min_probability: float | None, min_k_survivors: int, all_zero: str) -> "Plan":
        method, k, tau = check_method(method), check_k(k), check_tau(tau)
        check_chars(max_text_chars, "max_text_chars")
        check_chars(max_reasoning_chars, "max_reasoning_chars")
        check_per_turn(method, m)
        sizes = tuple(turn_sizes(k, m)) if method == "multi" else (k,)
        return cls(method, k, tau, sizes, max_text_chars, max_reasoning_chars, temperature, top_p,
                   dict(sampler_args) if sampler_args else None,
                   RepairRules(min_probability, min_k_survivors, all_zero))

    @property
    def m(self) -> int | None:
        """VS-Multi's responses per turn (None for the single-turn methods)."""
        return self.sizes[0] if self.method == "multi" else None

    def sampler_extra(self) -> dict | None:
        """A fresh copy of the sampler's arguments (vLLM's extra_args / vllm_xargs), or None."""
        return dict(self.sampler_args) if self.sampler_args else None

    def turn_format(self, n: int) -> tuple[str, dict, int]:
        """The regex, the JSON schema and the token bound of a turn that asks for ``n`` responses."""
        kw = dict(reasoning=self.method == "cot", max_text_chars=self.max_text_chars,
                  max_reasoning_chars=self.max_reasoning_chars)
        return answer_regex(n, **kw), answer_schema(n, **kw), answer_max_tokens(n, **kw)

    def meta(self, client: str, **extra: Any) -> dict:
        """How the distribution was obtained: the options, the client and what it adds."""
        return {"method": self.method, "k": self.k, "tau": self.tau, "m": self.m,
                "temperature": self.temperature, "top_p": self.top_p, **extra,
                "sampler_args": self.sampler_extra(), "client": client}


class Conversation:
    """One VS request in flight: its messages so far and what each turn returned."""

    def __init__(self, plan: Plan, prompt: str, seed: int | None):
        self.plan, self.prompt, self.seed = plan, prompt, seed
        self.messages = build_messages(prompt, plan.method, plan.k, plan.tau, m=plan.m)
        self.pairs: list[tuple[str, Any]] = []
        self.notes: list[str] = []
        self.raws: list[str] = []
        self.finish_reasons: list[str | None] = []
        self.reasoning: str | None = None

    def turn_seed(self, turn: int) -> int | None:
        return None if self.seed is None else self.seed + SEED_STRIDE * turn

    def record(self, turn: int, text: str, finish_reason: str | None, regex: str | None) -> None:
        """Parse one turn's answer (``regex``, when the format was enforced, checks it took) and,
        when another turn follows, ask for its responses."""
        n_turns = len(self.plan.sizes)
        prefix = f"turn {turn + 1}: " if n_turns > 1 else ""
        try:
            pairs, reasoning, notes = candidates(text, finish_reason)
        except VSParseError as e:
            raise VSParseError(prefix + str(e)) from None
        if regex is not None and re.fullmatch(regex, text) is None:
            notes.insert(0, "the answer does not match the requested format; the server may have ignored the constraint")
        self.pairs += pairs
        self.notes += [prefix + note for note in notes]
        self.raws.append(text)
        self.finish_reasons.append(finish_reason)
        self.reasoning = self.reasoning or reasoning
        if turn + 1 < n_turns:
            self.messages = continue_conversation(self.messages, text, self.plan.sizes[turn + 1], self.plan.tau)

    def distribution(self, meta: dict) -> Distribution:
        raw = self.raws[0] if len(self.raws) == 1 else json.dumps(self.raws)
        return to_distribution(self.pairs, notes=self.notes, reasoning=self.reasoning, raw=raw,
                               meta={**meta, "seed": self.seed, "finish_reasons": self.finish_reasons},
                               k=self.plan.k, rules=self.plan.rules)
