"""Verbalized Sampling (VS) on vLLM, with answers that always parse.

Verbalized Sampling (Zhang et al., "Verbalized Sampling: How to Mitigate Mode Collapse and Unlock
LLM Diversity", arXiv 2510.01171) asks the model for k candidate responses together with the
probability it gives each one, then draws one response from that verbalized distribution. It is
a prompting method: it restores some of the diversity that alignment collapsed without touching
the decoder, so it composes with any sampler (plain, EDT, REAL ...).

This module holds the whole pipeline:

- prompts: VS-Standard, VS-CoT (a "reasoning" field first) and VS-Multi (k responses over
  several turns of m), each with the tail knob ``tau`` ("sample from the tails: every probability
  below tau") and ``k``;
- the answer format: :func:`answer_schema` (a JSON schema) and :func:`answer_regex` (the same
  answers written compactly, which is what vLLM is asked to enforce, see below);
- :func:`parse_answer`: tolerant JSON extraction, weight repair (percentages, strings for numbers,
  negatives, values above 1, missing or invalid weights), merging of duplicate texts, optional
  filtering (keep stated p >= ``min_probability``, relaxed to keep ``min_k_survivors``),
  normalisation; the result is a :class:`Distribution` or a :class:`VSParseError` that says what
  is wrong, never an empty distribution;
- clients: :func:`generate_offline` / :func:`generate_offline_many` for ``vllm.LLM`` and
  :func:`generate_openai` for any OpenAI-compatible server.

Why a regex rather than the JSON schema for vLLM: vLLM's JSON-schema constraint lets the model put
any amount of whitespace between tokens unless the *server* was started with
``disable_any_whitespace`` (a per-request flag is ignored by the xgrammar backend), and a small
model can emit newlines until max_tokens, which truncates the JSON. The regex accepts exactly the
compact JSON texts valid under the schema, with bounded strings and at most 6 decimals per
probability, so the answer has a known maximum length (:func:`answer_max_tokens`) and, given that
many tokens, always completes and parses. Servers that are not vLLM get the JSON schema through
``response_format``; servers with neither get the prompt alone and the tolerant parser.

The public ``verbalized-sampling`` package (Apache-2.0) was read only as a reference for facts;
this is an independent implementation.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "METHODS",
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

METHODS = ("standard", "cot", "multi")
DEFAULT_K = 5
# Long enough for a short story's opening or a poem, short enough that k of them fit in a
# 4096-token context on a small model.
DEFAULT_MAX_TEXT_CHARS = 300
DEFAULT_MAX_REASONING_CHARS = 600
# A hard cap on k: beyond this the prompt is not what the paper studied (k = 5 by default) and a
# regex with k bounded strings grows linearly.
MAX_K = 50
WEIGHT_MODES = ("weight", "uniform", "softmax")
CONSTRAINTS = ("regex", "json", "none")

TEXT_KEYS = ("text", "response", "content", "answer", "output")
WEIGHT_KEYS = ("probability", "prob", "p", "weight", "likelihood", "confidence", "score")
LIST_KEYS = ("responses", "candidates", "items", "answers", "samples", "outputs")


class VSParseError(ValueError):
    """The model's answer holds no usable distribution; the message says why."""

    def __init__(self, message: str, raw: str | None = None):
        if raw is not None:
            shown = raw if len(raw) <= 300 else raw[:300] + f"... ({len(raw)} chars)"
            message = f"{message}\nanswer: {shown!r}"
        super().__init__(message)
        self.raw = raw


class VSServerError(RuntimeError):
    """The server refused every way of asking (structured outputs, response_format, plain)."""


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------

def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name} must be an integer, got {type(k).__name__} {k!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"{name} must be between 1 and {MAX_K}, got {k}")
    return k


def _check_tau(tau: Any) -> float | None:
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise ValueError(f"tau must be a number in (0, 1], got {tau!r}")
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau:g}")
    return float(tau)


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def turn_sizes(k: int, m: int | None = None) -> list[int]:
    """How many responses each VS-Multi turn asks for: k = 5, m = 2 -> [2, 2, 1].

    ``m`` defaults to ceil(k / 2): two turns, the least that still shows the model its own
    first answers before it writes alternatives.
    """
    k = _check_k(k)
    m = -(-k // 2) if m is None else _check_k(m, "m")
    if m > k:
        raise ValueError(f"m (responses per turn) must be <= k, got m={m} > k={k}")
    return [m] * (k // m) + ([k % m] if k % m else [])


def _sampling_line(tau: float | None) -> str:
    if tau is None:
        return "Sample the responses at random from the full distribution of possible responses."
    return (
        "Sample the responses at random from the tails of the distribution, such that the "
        f"probability of each response is less than {tau:g}."
    )


def _format_line(n: int, reasoning: bool) -> str:
    item = '{"text": "...", "probability": ...}'
    if reasoning:
        return f'Return only a JSON object of the form {{"reasoning": "...", "responses": [{item}, ...]}} with exactly {n} responses.'
    return f'Return only a JSON object of the form {{"responses": [{item}, ...]}} with exactly {n} responses.'


def system_prompt(method: str = "standard", k: int = DEFAULT_K, tau: float | None = None, *, m: int | None = None) -> str:
    """The system prompt of the first turn.

    VS-Standard asks for k responses with probabilities; VS-CoT asks for step-by-step reasoning
    about the space of responses first; VS-Multi asks for the first m of k (later turns use
    :func:`followup_message`). ``tau`` switches from "the full distribution" to "the tails,
    each probability below tau".
    """
    method, k, tau = _check_method(method), _check_k(k), _check_tau(tau)
    if m is not None and method != "multi":
        raise ValueError(f"m (responses per turn) is for method 'multi', not {method!r}")
    n = turn_sizes(k, m)[0] if method == "multi" else k
    lines = []
    if method == "multi" and n < k:
        lines.append(f"You will generate {k} responses to the user's input in total, {n} at a time. Generate the first {n} now.")
    else:
        lines.append(f"Generate {n} different responses to the user's input.")
    if method == "cot":
        lines.append(
            "First think step by step about the range of possible responses (different angles, "
            "styles, content) and write that reasoning in the \"reasoning\" field; then give the responses."
        )
    lines += [
        "Each response has a \"text\" (one complete response to the input) and a \"probability\" "
        "(a number from 0.0 to 1.0: how likely that response is given the input, relative to "
        "the full distribution of possible responses).",
        _sampling_line(tau),
        _format_line(n, method == "cot"),
    ]
    return "\n".join(lines)


def followup_message(n: int, tau: float | None = None) -> str:
    """The user turn that asks VS-Multi for ``n`` more responses."""
    n, tau = _check_k(n, "n"), _check_tau(tau)
    return "\n".join([
        f"Generate {n} more alternative responses to the original input, different from all the responses above.",
        _sampling_line(tau),
        _format_line(n, False),
    ])


def build_messages(prompt: str, method: str = "standard", k: int = DEFAULT_K, tau: float | None = None, *, m: int | None = None) -> list[dict]:
    """Chat messages for the first (or only) turn: the VS system prompt and the user's prompt."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return [
        {"role": "system", "content": system_prompt(method, k, tau, m=m)},
        {"role": "user", "content": prompt},
    ]


# --------------------------------------------------------------------------------------------
# Answer format
# --------------------------------------------------------------------------------------------

def _check_chars(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return n


def answer_schema(n_items: int = DEFAULT_K, *, reasoning: bool = False,
                  max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
                  max_reasoning_chars: int | None = DEFAULT_MAX_REASONING_CHARS) -> dict:
    """JSON schema of one answer: {"reasoning"?, "responses": [{"text", "probability"}] * n_items}."""
    n_items = _check_k(n_items, "n_items")
    text: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_text_chars is not None:
        text["maxLength"] = _check_chars(max_text_chars, "max_text_chars")
    item = {
        "type": "object",
        "properties": {"text": text, "probability": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["text", "probability"],
        "additionalProperties": False,
    }
    properties: dict[str, Any] = {}
    if reasoning:
        properties["reasoning"] = {"type": "string"}
        if max_reasoning_chars is not None:
            properties["reasoning"]["maxLength"] = _check_chars(max_reasoning_chars, "max_reasoning_chars")
    properties["responses"] = {"type": "array", "items": item, "minItems": n_items, "maxItems": n_items}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


# A JSON string's characters: anything but a quote, a backslash or a control character, i.e. no
# escapes, as xgrammar itself writes strings with a maxLength. Why: a bounded repetition of one
# character class costs ~0.02 ms a token in xgrammar's matcher, but of "class | escape" ~200 ms
# (measured with SmolLM2's 49k vocabulary at 300 characters), which would make decoding crawl.
# The price: candidates carry no newlines or straight double quotes. Each character is at most 4
# bytes in UTF-8 (see answer_max_tokens).
_CHAR = r'[^"\\\x00-\x1f]'
# The first character is not whitespace: a response that starts blank is one the parser strips,
# and an all-blank one it drops. The class adds what str.strip() removes above U+001F, as literal
# characters, which both Python's re and vLLM's backends read.
_UNICODE_SPACES = " \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_FIRST_CHAR = r'[^"\\\x00-\x1f' + _UNICODE_SPACES + ']'
# 0, 0.x..., 1, 1.0...: at most 6 decimals keeps every probability at most 8 characters.
_PROB = r'(?:0(?:\.[0-9]{1,6})?|1(?:\.0{1,6})?)'
_PROB_MAX_CHARS = 8


def _string_regex(max_chars: int) -> str:
    return '"' + _FIRST_CHAR + _CHAR + "{0,%d}" % (max_chars - 1) + '"'


def answer_regex(n_items: int = DEFAULT_K, *, reasoning: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                 max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS) -> str:
    """A regex for the compact JSON texts valid under :func:`answer_schema`.

    Every match parses with ``json.loads`` and validates against the schema with the same
    arguments; the regex is narrower (no whitespace, at most 6 decimals, no escapes in strings)
    so that the answer's length is bounded and xgrammar's matcher stays fast. Works with Python's ``re`` and with vLLM's regex backends.
    """
    n_items = _check_k(n_items, "n_items")
    text = _string_regex(_check_chars(max_text_chars, "max_text_chars"))
    item = r'\{"text":' + text + r',"probability":' + _PROB + r'\}'
    head = r'\{'
    if reasoning:
        head += r'"reasoning":' + _string_regex(_check_chars(max_reasoning_chars, "max_reasoning_chars")) + ","
    return head + r'"responses":\[' + item + ("," + item) * (n_items - 1) + r'\]\}'


def answer_max_tokens(n_items: int = DEFAULT_K, *, reasoning: bool = False,
                      max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                      max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS) -> int:
    """An upper bound on the tokens of any answer matching :func:`answer_regex`, plus the EOS.

    Every generated token decodes to at least one byte, and every string character is at most 4
    bytes in UTF-8, so bytes bound tokens. Real answers are far shorter (about 4 characters a token in
    English); the bound is what makes "never truncated" a guarantee rather than a hope.
    """
    n_items = _check_k(n_items, "n_items")
    fixed = len('{"responses":[]}') + n_items * len('{"text":"","probability":}') + (n_items - 1)
    strings = n_items * max_text_chars
    if reasoning:
        fixed += len('"reasoning":"",')
        strings += max_reasoning_chars
    return fixed + 4 * strings + n_items * _PROB_MAX_CHARS + 1


# --------------------------------------------------------------------------------------------
# Parsing and repair
# --------------------------------------------------------------------------------------------

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
        if any(not math.isfinite(p) or p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-9):
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
        if mode == "weight":
            return self.probabilities
        if mode == "uniform":
            return [1.0 / len(self.items)] * len(self.items)
        if mode == "softmax":
            exps = [math.exp(p) for p in self.probabilities]
            total = sum(exps)
            return [e / total for e in exps]
        raise ValueError(f"mode must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")

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


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def repair_weight(value: Any) -> tuple[float | None, bool, str | None]:
    """Read one stated probability: (number or None, written as a percentage?, note or None).

    Numbers pass through; strings holding one number ("0.3", "30%", "p = 0.3", "1/3") are read;
    booleans, NaN, infinities (and numbers too large for a float), words and strings with
    several numbers are invalid (None, with a note). Range repairs (negatives, > 1) are
    list-level and happen in :func:`parse_answer`.
    """
    if value is None:
        return None, False, "missing probability"
    if isinstance(value, bool):  # True is not a probability, though Python calls it 1
        return None, False, f"probability {value!r} is not a number"
    percent, note = False, None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            fraction = _FRACTION.match(value)
            numbers = _NUMBER.findall(value)
            if fraction:
                den = float(fraction.group(2))
                if den == 0:
                    return None, False, f"probability {_show(value)} divides by zero"
                number, note = float(fraction.group(1)) / den, f"probability {_show(value)} read as a fraction"
            elif len(numbers) != 1:
                what = "no number" if not numbers else "several numbers"
                return None, False, f"probability {_show(value)} holds {what}"
            elif "%" in value:
                number, percent = float(numbers[0]) / 100.0, True
                note = f"probability {_show(value)} read as a percentage"
            else:
                number, note = float(numbers[0]), f"probability {_show(value)} was a string"
        else:
            return None, False, f"probability of type {type(value).__name__} is not a number"
    except OverflowError:  # an int with hundreds of digits
        return None, False, f"probability {_show(value)} is too large for a float"
    if not math.isfinite(number):
        return None, False, f"probability {_show(value)} is not finite"
    return number, percent, note


def _strip_fences(text: str) -> str:
    fence = re.search(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", text, re.S)
    return fence.group(1) if fence else text


# json raises RecursionError, not ValueError, on deeply nested input ("[[[[...").
_JSON_ERRORS = (ValueError, RecursionError)
_MAX_STARTS = 64
_LIST_KEY = re.compile(r'"(?:%s)"\s*:\s*\[' % "|".join(LIST_KEYS))


def _salvage_list(text: str, start: int) -> list:
    """Complete JSON values of the array opening at text[start] == '[', up to the first broken one.

    A truncated answer (max_tokens, a dropped connection) keeps every item it finished.
    """
    decoder = json.JSONDecoder()
    items, pos = [], start + 1
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except _JSON_ERRORS:
            break
        items.append(value)
    return items


def _worth_reading(value: Any) -> bool:
    """A dict, or a list with something that could be a candidate (not "[5]" from the prose)."""
    return isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (str, dict, list)) for v in value))


_MAX_ENCODINGS = 3  # JSON inside a JSON string inside a JSON string, at most


def _decoded_string(value: Any) -> str | None:
    """The text of a JSON string that holds JSON ("{\\"responses\\": ...}", or a JSON string
    again), else None."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "[", '"'):
        return value
    return None


def _extract(text: str, depth: int = 0) -> tuple[Any, list[str]]:
    """The JSON value in a model's answer, tolerating fences, prose around it, truncation and
    double encoding (the whole answer, or its JSON, written as a JSON string: read again)."""
    notes: list[str] = []
    body = _strip_fences(text).strip()
    try:
        value = json.loads(body)
    except _JSON_ERRORS:
        pass
    else:
        inner = _decoded_string(value)
        if inner is None or depth >= _MAX_ENCODINGS:
            return value, notes
        value, inner_notes = _extract(inner, depth + 1)
        return value, ["the JSON was double-encoded (a JSON string holding JSON): decoded again", *inner_notes]
    decoder = json.JSONDecoder()
    key = _LIST_KEY.search(body)
    # A complete JSON value inside prose. When the text has a "responses": [ only a value that
    # encloses it will do: an item decoded on its own would pass for a one-item answer.
    # At most _MAX_STARTS openings are tried: a real answer opens its JSON within the first
    # few brackets, and each try on a deeply nested input ("[[[[...") costs ~1000 recursions.
    for n, match in enumerate(re.finditer(r"[\[{]", body)):
        if (key and match.start() > key.start()) or n >= _MAX_STARTS:
            break
        try:
            value, end = decoder.raw_decode(body, match.start())
        except _JSON_ERRORS:
            continue
        if (key and end <= key.start()) or not _worth_reading(value):
            continue
        notes.append("ignored text around the JSON")
        return value, notes
    # Python-literal style answers (single quotes, True/None), first bracket to last.
    first = re.search(r"[\[{]", body)
    last = max(body.rfind("}"), body.rfind("]"))
    if first and last > first.start():
        try:
            value = ast.literal_eval(body[first.start(): last + 1])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = None
        if _worth_reading(value):
            notes.append("read a Python literal, not JSON")
            return value, notes
    # A double-encoded answer inside prose: a JSON string literal that holds the JSON.
    if depth < _MAX_ENCODINGS and not key:
        for n, match in enumerate(re.finditer(r'"\s*[\[{]', body)):
            if n >= _MAX_STARTS:
                break
            try:
                value, _ = decoder.raw_decode(body, match.start())
                inner = _decoded_string(value)
                if inner is None:
                    continue
                value, inner_notes = _extract(inner, depth + 1)
            except _JSON_ERRORS:
                continue
            if _worth_reading(value):
                return value, ["ignored text around the JSON",
                               "the JSON was double-encoded (a JSON string holding JSON): decoded again", *inner_notes]
    # Broken or truncated JSON: keep the complete items of the responses list.
    start = key.end() - 1 if key else body.find("[")
    if start >= 0:
        items = _salvage_list(body, start)
        if _worth_reading(items):
            notes.append(f"the JSON is broken or truncated; kept the {len(items)} complete item(s) before the break")
            reasoning = re.search(r'"reasoning"\s*:\s*"((?:[^"\\]|\\.)*)"', body[:start])
            value = {"responses": items}
            if reasoning:
                try:
                    value["reasoning"] = json.loads('"' + reasoning.group(1) + '"')
                except ValueError:
                    pass
            return value, notes
    raise ValueError("no JSON object or list found")


_TYPE_NAMES = {int: "a number", float: "a number", str: "a string", bool: "a boolean", type(None): "null"}


_MAX_NESTING = 3  # {"output": {"result": {"responses": [...]}}} at most


def _nested_list(value: dict, depth: int) -> tuple[list, str | None, str] | None:
    """A candidates list (under one of LIST_KEYS) in an object wrapped in another one, such as
    {"output": {"responses": [...]}}, or in a string value holding such JSON: (list, reasoning,
    path) for the first one in key order, or None."""
    for name, inner in value.items():
        if depth >= _MAX_NESTING:
            break
        if isinstance(inner, str) and _decoded_string(inner) is not None:
            try:
                inner = json.loads(inner)
            except _JSON_ERRORS:
                continue
        if not isinstance(inner, dict):
            continue
        reasoning = inner.get("reasoning") if isinstance(inner.get("reasoning"), str) else None
        for key in LIST_KEYS:
            if isinstance(inner.get(key), list):
                return inner[key], reasoning, f"{name!r}"
        found = _nested_list(inner, depth + 1)
        if found is not None:
            return found[0], found[1] or reasoning, f"{name!r} > {found[2]}"
    return None


def _find_list(value: Any) -> tuple[list, str | None, str | None]:
    """The list of candidates in a parsed answer, the reasoning if there is one, and a note
    when the list was found nested in a wrapper object."""
    if isinstance(value, list):
        return value, None, None
    if not isinstance(value, dict):
        raise VSParseError(f"expected a JSON object with a \"responses\" list, got {_TYPE_NAMES.get(type(value), type(value).__name__)}")
    reasoning = value.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, str) else None
    for key in LIST_KEYS:
        if isinstance(value.get(key), list):
            return value[key], reasoning, None
    # A wrapper object around the answer ({"output": {"responses": [...]}}): before the rules
    # below, which would take {"output": ...} for a single candidate whose text is an object.
    nested = _nested_list(value, 0)
    if nested is not None:
        items, inner_reasoning, path = nested
        return items, reasoning or inner_reasoning, f"read the list nested under {path}"
    # A single candidate object instead of a list.
    if any(k in value for k in TEXT_KEYS):
        return [value], reasoning, None
    lists = [k for k, v in value.items() if isinstance(v, list)]
    if len(lists) == 1:
        return value[lists[0]], reasoning, None
    keys = ", ".join(repr(k) for k in value) or "none"
    raise VSParseError(f"the JSON object has no \"responses\" list (keys: {keys})")


def _read_item(item: Any, index: int) -> tuple[str | None, Any, str | None]:
    """(text, stated weight or None, note) for one candidate; text None drops it."""
    if isinstance(item, str):
        return item, None, None
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1], None
    if not isinstance(item, dict):
        return None, None, f"item {index} is a {type(item).__name__}, not an object; dropped"
    text = next((item[k] for k in TEXT_KEYS if k in item), None)
    weight = next((item[k] for k in WEIGHT_KEYS if k in item), None)
    if text is None:
        return None, None, f"item {index} has no text field; dropped"
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return str(text), weight, f"item {index}: text was a number"
    if not isinstance(text, str):
        return None, None, f"item {index}: text is a {type(text).__name__}; dropped"
    return text, weight, None


def _dedup_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _candidates(text: Any, finish_reason: str | None = None) -> tuple[list[tuple[str, Any]], str | None, list[str]]:
    """(text, stated weight) pairs of one answer, its reasoning, and notes on what was fixed."""
    if text is None or not isinstance(text, str):
        raise VSParseError(f"the answer is {type(text).__name__}, not text")
    if not text.strip():
        raise VSParseError("the answer is empty", raw=text)
    notes: list[str] = []
    cut = " (the answer hit max_tokens before it was complete)" if finish_reason == "length" else ""
    if cut:
        notes.append("the answer hit max_tokens")
    try:
        value, extract_notes = _extract(text)
    except ValueError:
        raise VSParseError(f"no JSON with a \"responses\" list in the answer{cut}", raw=text) from None
    notes += extract_notes
    try:
        raw_items, reasoning, found_note = _find_list(value)
    except VSParseError as e:
        raise VSParseError(str(e), raw=text) from None
    if found_note:
        notes.append(found_note)
    pairs = []
    for i, raw_item in enumerate(raw_items):
        item_text, weight, note = _read_item(raw_item, i)
        if note:
            notes.append(note)
        if item_text is None:
            continue
        if not item_text.strip():
            notes.append(f"item {i} has an empty text; dropped")
            continue
        pairs.append((item_text.strip(), weight))
    if not pairs:
        what = "an empty list" if not raw_items else f"{len(raw_items)} item(s), none with a usable text"
        raise VSParseError(f"the responses list holds {what}{cut}", raw=text)
    return pairs, reasoning, notes


def _check_filter(min_probability, min_k_survivors, all_zero) -> None:
    if all_zero not in ("uniform", "error"):
        raise ValueError(f"all_zero must be 'uniform' or 'error', got {all_zero!r}")
    if min_probability is not None and (isinstance(min_probability, bool) or not isinstance(min_probability, (int, float))
                                        or not 0 <= min_probability <= 1):
        raise ValueError(f"min_probability must be a number in [0, 1], got {min_probability!r}")
    if isinstance(min_k_survivors, bool) or not isinstance(min_k_survivors, int) or min_k_survivors < 1:
        raise ValueError(f"min_k_survivors must be an integer >= 1, got {min_k_survivors!r}")


def _postprocess(
    pairs: Sequence[tuple[str, Any]],
    *,
    k: int | None,
    min_probability: float | None,
    min_k_survivors: int,
    all_zero: str,
) -> tuple[tuple[Item, ...], list[str]]:
    """Repair weights, merge duplicates, filter, normalise, sort (see :func:`parse_answer`)."""
    repairs: list[str] = []
    read: list[tuple[float | None, bool]] = []
    for i, (_, weight) in enumerate(pairs):
        number, percent, note = repair_weight(weight)
        if note:
            repairs.append(f"item {i}: {note}")
        read.append((number, percent))

    # A list whose largest bare number is above 1 but at most 100 is written in percent: a model
    # that switches to percentages does so for the whole list, so "0.5" there means half a
    # percent, and reading it so keeps the list's ratios (ALGORITHMS.md §5). Above 100 it is no
    # percentage either, and values above 1 are clipped instead.
    bare = [n for n, pct in read if n is not None and not pct]
    as_percent = bool(bare) and 1 < max(bare) <= 100
    if as_percent:
        repairs.append("probabilities above 1 and at most 100: read the list as percentages")
    weights: list[float] = []
    for (text, _), (number, percent) in zip(pairs, read):
        if number is None:  # missing or invalid, noted above
            weights.append(0.0)
            continue
        if as_percent and not percent:
            number /= 100.0
        if number < 0:
            repairs.append(f"{text[:30]!r}: negative probability {number:g} set to 0")
            number = 0.0
        elif number > 1:
            repairs.append(f"{text[:30]!r}: probability {number:g} clipped to 1")
            number = 1.0
        weights.append(number)

    # Duplicates: the same response listed twice carries the mass of both mentions.
    index: dict[str, int] = {}
    items: list[list] = []  # [text, weight, stated]
    for (text, stated), w in zip(pairs, weights):
        key = _dedup_key(text)
        if key in index:
            items[index[key]][1] += w
            repairs.append(f"duplicate text {text[:30]!r} merged (probabilities added)")
        else:
            index[key] = len(items)
            items.append([text, w, stated])

    if k is not None and len(items) != k:
        repairs.append(f"asked for {k} items, got {len(items)}")

    if min_probability is not None:
        kept = [it for it in items if it[1] >= min_probability]
        if len(kept) < min(min_k_survivors, len(items)):
            order = sorted(range(len(items)), key=lambda j: -items[j][1])  # stable: earlier first
            chosen = set(order[:min_k_survivors])
            kept = [it for j, it in enumerate(items) if j in chosen]
            repairs.append(f"fewer than {min_k_survivors} item(s) had probability >= {min_probability:g}; "
                           f"kept the {len(kept)} most probable")
        elif len(kept) < len(items):
            repairs.append(f"dropped {len(items) - len(kept)} item(s) with probability < {min_probability:g}")
        items = kept

    total = math.fsum(it[1] for it in items)
    if total <= 0:
        if all_zero == "error":
            raise VSParseError("every probability is zero, missing or invalid")
        repairs.append("every probability is zero, missing or invalid: uniform weights")
        probs = [1.0 / len(items)] * len(items)
    else:
        probs = [it[1] / total for it in items]
    order = sorted(range(len(items)), key=lambda j: -probs[j])
    result = [Item(items[j][0], probs[j], items[j][2]) for j in order]
    # Normalisation can leave the sum 1 +- a few ulps; fold the residue into one item without
    # breaking the order: a surplus into the top item, a deficit into the last item that stays
    # >= the one after it (not into the top one: it may be tied with the second).
    residue = 1.0 - math.fsum(it.probability for it in result)
    if residue:
        j = 0
        if residue < 0:
            j = next((i for i in range(len(result) - 1, -1, -1)
                      if result[i].probability + residue >= (result[i + 1].probability if i + 1 < len(result) else 0.0)), 0)
        result[j] = Item(result[j].text, result[j].probability + residue, result[j].stated)
    return tuple(result), repairs


def parse_answer(
    text: str | None,
    *,
    k: int | None = None,
    min_probability: float | None = None,
    min_k_survivors: int = 1,
    all_zero: str = "uniform",
    finish_reason: str | None = None,
    meta: dict | None = None,
) -> Distribution:
    """A model's VS answer -> :class:`Distribution`, repairing what can be repaired.

    Where the list is: the JSON answer, also with prose or fences around it, truncated (the
    complete items are kept), as a Python literal, double-encoded (the JSON written as a JSON
    string, "{\\"responses\\": ...}", up to three times), or nested in a wrapper object
    ({"output": {"responses": [...]}}, up to three levels; a string value there may hold the JSON).

    Stated probabilities (weights), per item: numbers; strings holding one number ("0.3",
    "p = 0.3"), a percentage ("30%") or a fraction ("1/3"); anything else (words, booleans,
    NaN, several numbers, a missing field) weighs 0 and is noted. Then per list (ALGORITHMS.md
    §5): a list whose bare numbers exceed 1 (one above 1 is enough) while none is above 100 is
    written in percent and read so, every bare number divided by 100 (a model that switches to
    percentages does so for the whole list), which keeps their ratios: 40/30/20/10 is
    0.4/0.3/0.2/0.1 (clipping each to 1, as the public package does, would make it uniform).
    A list with a number above 100 is no percentage list either: values above 1 are clipped to
    1. Negatives become 0. Duplicate texts are merged (weights added), the filter below reads
    these repaired weights, and the survivors are normalised to sum to 1.

    - ``k``: the number of items asked for; a different number is noted in ``repairs``.
    - ``min_probability``: keep items whose stated (repaired) probability is >= it; if fewer
      than ``min_k_survivors`` pass, keep the ``min_k_survivors`` most probable instead.
    - ``all_zero``: when every weight is zero, missing or invalid: "uniform" draws uniformly
      (noted), "error" raises.
    - ``finish_reason``: the engine's; "length" is noted (a truncated answer keeps its complete
      items).

    Raises :class:`VSParseError` naming the problem when no candidate text can be recovered.
    """
    _check_filter(min_probability, min_k_survivors, all_zero)
    pairs, reasoning, notes = _candidates(text, finish_reason)
    try:
        items, repairs = _postprocess(pairs, k=k, min_probability=min_probability,
                                      min_k_survivors=min_k_survivors, all_zero=all_zero)
    except VSParseError as e:
        raise VSParseError(str(e), raw=text) from None
    return Distribution(items, tuple(notes + repairs), reasoning, text, dict(meta or {}))


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------

class _Job:
    """One VS request in flight: its conversation so far and what each turn returned."""

    def __init__(self, prompt: str, seed: int | None, messages: list[dict]):
        self.prompt, self.seed, self.messages = prompt, seed, messages
        self.pairs: list[tuple[str, Any]] = []
        self.notes: list[str] = []
        self.raws: list[str] = []
        self.finish_reasons: list[str | None] = []
        self.reasoning: str | None = None

    def add_turn(self, turn: int, n_turns: int, text: str, finish_reason: str | None, regex: str | None) -> None:
        """Parse one turn's answer; ``regex`` (when the format was enforced) checks it took."""
        prefix = f"turn {turn + 1}: " if n_turns > 1 else ""
        try:
            pairs, reasoning, notes = _candidates(text, finish_reason)
        except VSParseError as e:
            raise VSParseError(prefix + str(e)) from None
        if regex is not None and re.fullmatch(regex, text) is None:
            notes.insert(0, "the answer does not match the requested format; the server may have ignored the constraint")
        self.pairs += pairs
        self.notes += [prefix + note for note in notes]
        self.raws.append(text)
        self.finish_reasons.append(finish_reason)
        self.reasoning = self.reasoning or reasoning

    def distribution(self, k: int, meta: dict, min_probability, min_k_survivors, all_zero) -> Distribution:
        raw = self.raws[0] if len(self.raws) == 1 else json.dumps(self.raws)
        try:
            items, repairs = _postprocess(self.pairs, k=k, min_probability=min_probability,
                                          min_k_survivors=min_k_survivors, all_zero=all_zero)
        except VSParseError as e:
            raise VSParseError(str(e), raw=raw) from None
        meta = {**meta, "seed": self.seed, "finish_reasons": self.finish_reasons}
        return Distribution(items, tuple(self.notes + repairs), self.reasoning, raw, meta)


def _options(method, k, tau, m, max_text_chars, max_reasoning_chars):
    method, k, tau = _check_method(method), _check_k(k), _check_tau(tau)
    _check_chars(max_text_chars, "max_text_chars")
    _check_chars(max_reasoning_chars, "max_reasoning_chars")
    if m is not None and method != "multi":
        raise ValueError(f"m (responses per turn) is for method 'multi', not {method!r}")
    sizes = turn_sizes(k, m) if method == "multi" else [k]
    return method, k, tau, sizes


def _turn_format(n, method, max_text_chars, max_reasoning_chars):
    kw = dict(reasoning=method == "cot", max_text_chars=max_text_chars, max_reasoning_chars=max_reasoning_chars)
    return answer_regex(n, **kw), answer_schema(n, **kw), answer_max_tokens(n, **kw)


def generate_offline_many(
    llm,
    prompts: Sequence[str],
    *,
    method: str = "standard",
    k: int = DEFAULT_K,
    tau: float | None = None,
    m: int | None = None,
    temperature: float = 0.8,
    top_p: float = 1.0,
    seeds: Sequence[int | None] | None = None,
    max_tokens: int | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS,
    sampler_args: dict | None = None,
    constraint: str = "regex",
    min_probability: float | None = None,
    min_k_survivors: int = 1,
    all_zero: str = "uniform",
    errors: str = "raise",
    use_tqdm: bool = False,
) -> list[Distribution | VSParseError]:
    """VS for many prompts with ``vllm.LLM.chat`` and structured outputs, one batch per turn.

    ``constraint``: "regex" (default: :func:`answer_regex`, compact and bounded), "json" (the
    JSON schema; whitespace is unbounded unless the engine sets disable_any_whitespace) or
    "none" (the prompt alone). ``sampler_args`` go to ``SamplingParams.extra_args``, e.g.
    {"sampler": "edt"} for VS over EDT decoding. ``max_tokens`` defaults to
    :func:`answer_max_tokens`, so the answer is never cut short (the engine stops at its
    max_model_len all the same; a cut answer keeps its complete items and says so).
    ``seeds[i]`` seeds prompt i's generation. ``errors``: "raise" raises the first
    :class:`VSParseError`; "keep" puts it in the result list in place of that prompt's
    distribution (a batch is not lost to one bad answer).

    On vLLM 0.32's CPU backend, seeded requests crash the engine ("CPU Generator does not use
    offset") when a prompt's prefill is split across steps, which large batches cause; create
    the LLM with ``enable_chunked_prefill=False, max_num_batched_tokens=max_model_len`` there.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    method, k, tau, sizes = _options(method, k, tau, m, max_text_chars, max_reasoning_chars)
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got {constraint!r}")
    _check_filter(min_probability, min_k_survivors, all_zero)
    if errors not in ("raise", "keep"):
        raise ValueError(f"errors must be 'raise' or 'keep', got {errors!r}")
    prompts = list(prompts)
    seeds = list(seeds) if seeds is not None else [None] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds must have one entry per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
    jobs = [_Job(p, s, build_messages(p, method, k, tau, m=m)) for p, s in zip(prompts, seeds)]
    failed: dict[int, VSParseError] = {}
    for turn, n in enumerate(sizes):
        live = [i for i in range(len(jobs)) if i not in failed]
        if not live:
            break
        regex, schema, bound = _turn_format(n, method, max_text_chars, max_reasoning_chars)
        structured = {"regex": lambda: StructuredOutputsParams(regex=regex),
                      "json": lambda: StructuredOutputsParams(json=schema), "none": lambda: None}[constraint]
        params = [
            SamplingParams(
                temperature=temperature, top_p=top_p, max_tokens=max_tokens or bound,
                # A different seed per turn, so VS-Multi turns do not replay the same noise.
                seed=None if job.seed is None else job.seed + 1_000_003 * turn,
                # One StructuredOutputsParams per request: vLLM writes the chosen backend into it.
                structured_outputs=structured(), extra_args=dict(sampler_args) if sampler_args else None,
            )
            for job in (jobs[i] for i in live)
        ]
        outputs = llm.chat([jobs[i].messages for i in live], params, use_tqdm=use_tqdm)
        for i, out in zip(live, outputs):
            job, completion = jobs[i], out.outputs[0]
            try:
                job.add_turn(turn, len(sizes), completion.text, completion.finish_reason,
                             regex if constraint == "regex" else None)
            except VSParseError as e:
                if errors == "raise":
                    raise
                failed[i] = e
                continue
            if turn + 1 < len(sizes):
                job.messages = job.messages + [{"role": "assistant", "content": completion.text},
                                               {"role": "user", "content": followup_message(sizes[turn + 1], tau)}]
    meta = {"method": method, "k": k, "tau": tau, "m": sizes[0] if method == "multi" else None,
            "temperature": temperature, "top_p": top_p, "constraint": constraint,
            "sampler_args": dict(sampler_args) if sampler_args else None, "client": "vllm.LLM"}
    results: list[Distribution | VSParseError] = []
    for i, job in enumerate(jobs):
        try:
            results.append(failed[i] if i in failed else job.distribution(k, meta, min_probability, min_k_survivors, all_zero))
        except VSParseError as e:
            if errors == "raise":
                raise
            results.append(e)
    return results


def generate_offline(llm, prompt: str, *, seed: int | None = None, **kwargs) -> Distribution:
    """VS for one prompt with ``vllm.LLM``; see :func:`generate_offline_many` for the options."""
    return generate_offline_many(llm, [prompt], seeds=[seed], **kwargs)[0]


def _is_refusal(error: Exception) -> bool:
    """HTTP 400/422: the server understood the request and refused part of it."""
    return getattr(error, "status_code", None) in (400, 422)


def _error_text(error: Exception) -> str:
    message = None
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
    return f"HTTP {getattr(error, 'status_code', '?')}: {message or error}"


def generate_openai(
    client,
    model: str,
    prompt: str,
    *,
    method: str = "standard",
    k: int = DEFAULT_K,
    tau: float | None = None,
    m: int | None = None,
    temperature: float = 0.8,
    top_p: float = 1.0,
    seed: int | None = None,
    max_tokens: int | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS,
    sampler_args: dict | None = None,
    structured: str = "auto",
    min_probability: float | None = None,
    min_k_survivors: int = 1,
    all_zero: str = "uniform",
    timeout: float | None = None,
) -> Distribution:
    """VS through an OpenAI-compatible chat completions endpoint (an ``openai.OpenAI`` client).

    ``structured``: "vllm" sends vLLM's ``structured_outputs`` ({"regex": answer_regex(...)});
    "json_schema" sends ``response_format`` with :func:`answer_schema`; "none" sends the prompt
    alone and relies on the tolerant parser; "auto" tries them in that order, moving on when the
    server refuses one (HTTP 400/422) for a reason other than a parameter it names (vLLM names
    them: a bad sampler argument is reported at once). ``sampler_args`` go out as
    ``vllm_xargs`` (vLLM only). ``max_tokens`` defaults to the server's default (vLLM: the rest
    of the context, so a constrained answer completes whenever it fits).
    ``meta["structured"]`` of the result says which way was used, ``meta["refused"]`` why the
    others were not. Raises :class:`VSServerError` when the server refuses all of them.
    """
    method, k, tau, sizes = _options(method, k, tau, m, max_text_chars, max_reasoning_chars)
    ladders = {"auto": ["vllm", "json_schema", "none"], "vllm": ["vllm"], "json_schema": ["json_schema"], "none": ["none"]}
    if structured not in ladders:
        raise ValueError(f"structured must be one of {', '.join(ladders)}, got {structured!r}")
    _check_filter(min_probability, min_k_survivors, all_zero)
    modes = ladders[structured]
    job = _Job(prompt, seed, build_messages(prompt, method, k, tau, m=m))
    refusals: list[str] = []
    for turn, n in enumerate(sizes):
        regex, schema, _ = _turn_format(n, method, max_text_chars, max_reasoning_chars)
        while True:
            mode = modes[0]
            extra_body: dict[str, Any] = {}
            kwargs: dict[str, Any] = {}
            if mode == "vllm":
                extra_body["structured_outputs"] = {"regex": regex}
            elif mode == "json_schema":
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "verbalized_sampling", "schema": schema, "strict": True},
                }
            if sampler_args:
                extra_body["vllm_xargs"] = dict(sampler_args)
            if extra_body:
                kwargs["extra_body"] = extra_body
            # Unset options stay out of the request: the SDK sends None as null, and timeout=None
            # would mean "no timeout" rather than the client's own.
            if seed is not None:
                kwargs["seed"] = seed + 1_000_003 * turn
            if timeout is not None:
                kwargs["timeout"] = timeout
            # No max_tokens by default: vLLM then allows the rest of the context, and refuses a
            # max_tokens above max_model_len, which answer_max_tokens (a worst case) can exceed.
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            try:
                reply = client.chat.completions.create(
                    model=model, messages=job.messages, temperature=temperature, top_p=top_p, **kwargs,
                )
                break
            except Exception as e:  # noqa: BLE001 - only refusals are retried; the rest re-raise
                if not _is_refusal(e):
                    raise
                message = _error_text(e)
                named = re.search(r"parameter=([\w.]+)", message)
                if named and not named.group(1).startswith(("structured_outputs", "response_format")):
                    # vLLM names the parameter it refused: not the format, so no other mode helps.
                    raise VSServerError(f"the server refused the request: {message}") from e
                refusals.append(f"{mode}: {message}")
                if len(modes) == 1:
                    raise VSServerError("the server refused every way of asking for VS:\n  " + "\n  ".join(refusals)) from e
                modes = modes[1:]  # a server that refused a mode refuses it on later turns too
        choice = reply.choices[0]
        try:
            job.add_turn(turn, len(sizes), choice.message.content, choice.finish_reason, regex if mode == "vllm" else None)
        except VSParseError as e:
            if refusals:
                raise VSParseError(f"{e}\n(the server refused structured outputs: {'; '.join(refusals)})") from None
            raise
        if turn + 1 < len(sizes):
            job.messages = job.messages + [{"role": "assistant", "content": choice.message.content},
                                           {"role": "user", "content": followup_message(sizes[turn + 1], tau)}]
    meta = {"method": method, "k": k, "tau": tau, "m": sizes[0] if method == "multi" else None,
            "temperature": temperature, "top_p": top_p, "model": model, "structured": modes[0],
            "refused": refusals, "sampler_args": dict(sampler_args) if sampler_args else None,
            "client": "openai"}
    return job.distribution(k, meta, min_probability, min_k_survivors, all_zero)


def candidates_table(dist: Distribution, drawn: int | None = None, width: int = 88) -> str:
    """A readable table of the candidates (used by ``real-vllm vs``)."""
    import textwrap

    lines = [f"{'':2}{'#':>2}  {'prob':>6}  {'stated':>8}  text", "-" * (width + 22)]
    for i, it in enumerate(dist.items):
        if it.stated is None:
            stated = "-"
        elif isinstance(it.stated, (int, float)) and not isinstance(it.stated, bool):
            stated = f"{it.stated:g}"
        else:
            stated = str(it.stated)
        wrapped = textwrap.wrap(" ".join(it.text.split()), width) or [""]
        mark = "->" if i == drawn else ""
        lines.append(f"{mark:2}{i + 1:>2}  {it.probability:6.3f}  {stated[:8]:>8}  {wrapped[0]}")
        lines += [f"{'':22}{line}" for line in wrapped[1:]]
    return "\n".join(lines)
