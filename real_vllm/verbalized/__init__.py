"""Verbalized Sampling (VS) on vLLM, with answers that always parse.

Verbalized Sampling (Zhang et al., "Verbalized Sampling: How to Mitigate Mode Collapse and Unlock
LLM Diversity", arXiv 2510.01171) asks the model for k candidate responses together with the
probability it gives each one, then draws one response from that verbalized distribution. It is
a prompting method: it restores some of the diversity that alignment collapsed without touching
the decoder, so it composes with any sampler (plain, EDT, REAL ...). The rules are
docs/algorithms.md §6.

The package, by concern:

- :mod:`~real_vllm.verbalized.prompts`: VS-Standard, VS-CoT (a "reasoning" field first) and
  VS-Multi (k responses over several turns of m), each with the tail knob ``tau`` and ``k`` (§6.1);
- :mod:`~real_vllm.verbalized.schema`: the answer format, :func:`answer_schema` (a JSON schema)
  and :func:`answer_regex` (the same answers written compactly, what vLLM is asked to enforce);
- :mod:`~real_vllm.verbalized.parse`: :func:`parse_answer`, tolerant extraction of the candidates;
- :mod:`~real_vllm.verbalized.repair`: weight repair (percentages, strings for numbers,
  negatives, values above 1, missing or invalid weights), merging of duplicate texts, optional
  filtering (keep stated p >= ``min_probability``, relaxed to keep ``min_k_survivors``),
  normalisation (§6.2); the result is a :class:`Distribution` or a :class:`VSParseError` that
  says what is wrong, never an empty distribution;
- :mod:`~real_vllm.verbalized.distribution`: :class:`Distribution` and the draw (§6.3);
- :mod:`~real_vllm.verbalized.clients`: :func:`generate_offline` / :func:`generate_offline_many`
  for ``vllm.LLM`` and :func:`generate_openai` for any OpenAI-compatible server, over
  :mod:`~real_vllm.verbalized.request` (one request's options and conversation);
- :mod:`~real_vllm.verbalized.cli`: ``real-vllm vs``.

The public ``verbalized-sampling`` package (Apache-2.0) was read only as a reference for facts;
this is an independent implementation.
"""

from real_vllm.verbalized.clients import CONSTRAINTS, generate_offline, generate_offline_many, generate_openai
from real_vllm.verbalized.distribution import WEIGHT_MODES, Distribution, Item
from real_vllm.verbalized.errors import VSParseError, VSServerError
from real_vllm.verbalized.options import (
    DEFAULT_K, DEFAULT_MAX_REASONING_CHARS, DEFAULT_MAX_TEXT_CHARS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P,
    MAX_K, METHODS,
)
from real_vllm.verbalized.parse import parse_answer
from real_vllm.verbalized.prompts import build_messages, followup_message, system_prompt, turn_sizes
from real_vllm.verbalized.repair import repair_weight
from real_vllm.verbalized.schema import answer_max_tokens, answer_regex, answer_schema

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_K",
    "DEFAULT_MAX_REASONING_CHARS",
    "DEFAULT_MAX_TEXT_CHARS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "MAX_K",
    "METHODS",
    "WEIGHT_MODES",
    "Distribution",
    "Item",
    "VSParseError",
    "VSServerError",
    "answer_max_tokens",
    "answer_regex",
    "answer_schema",
    "build_messages",
    "followup_message",
    "generate_offline",
    "generate_offline_many",
    "generate_openai",
    "parse_answer",
    "repair_weight",
    "system_prompt",
    "turn_sizes",
]
