"""Reading a model's VS answer: where the candidates are, whatever the model wrote around them.

:func:`candidates` finds the list of (text, stated weight) pairs in the JSON answer, also with
prose or fences around it, truncated, as a Python literal, double-encoded or nested in a wrapper
object; :func:`parse_answer` adds the weight repair of :mod:`real_vllm.verbalized.repair` and
returns a :class:`Distribution` or raises a :class:`VSParseError` that says what is wrong.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from real_vllm.verbalized.distribution import Distribution
from real_vllm.verbalized.errors import VSParseError
from real_vllm.verbalized.repair import RepairRules, to_distribution

TEXT_KEYS = ("text", "response", "content", "answer", "output")
WEIGHT_KEYS = ("probability", "prob", "p", "weight", "likelihood", "confidence", "score")
LIST_KEYS = ("responses", "candidates", "items", "answers", "samples", "outputs")

# json raises RecursionError, not ValueError, on deeply nested input ("[[[[...").
_JSON_ERRORS = (ValueError, RecursionError)
# At most this many openings are tried: a real answer opens its JSON within the first few
# brackets, and each try on a deeply nested input ("[[[[...") costs ~1000 recursions.
_MAX_STARTS = 64
_MAX_ENCODINGS = 3  # JSON inside a JSON string inside a JSON string, at most
_MAX_NESTING = 3  # {"output": {"result": {"responses": [...]}}} at most
_LIST_KEY = re.compile(r'"(?:%s)"\s*:\s*\[' % "|".join(LIST_KEYS))
_TYPE_NAMES = {int: "a number", float: "a number", str: "a string", bool: "a boolean", type(None): "null"}
_AROUND = "ignored text around the JSON"
_DOUBLE_ENCODED = "the JSON was double-encoded (a JSON string holding JSON): decoded again"


def _strip_fences(text: str) -> str:
    fence = re.search(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", text, re.S)
    return fence.group(1) if fence else text


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


def _decoded_string(value: Any) -> str | None:
    """The text of a JSON string that holds JSON ("{\\"responses\\": ...}", or a JSON string
    again), else None."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "[", '"'):
        return value
    return None


def _reasoning_of(value: dict) -> str | None:
    reasoning = value.get("reasoning")
    return reasoning if isinstance(reasoning, str) else None


def _extract(text: str, depth: int = 0) -> tuple[Any, list[str]]:
    """The JSON value in a model's answer, tolerating fences, prose around it, truncation and
    double encoding (the whole answer, or its JSON, written as a JSON string: read again)."""
    body = _strip_fences(text).strip()
    try:
        value = json.loads(body)
    except _JSON_ERRORS:
        pass
    else:
        inner = _decoded_string(value)
        if inner is None or depth >= _MAX_ENCODINGS:
            return value, []
        value, inner_notes = _extract(inner, depth + 1)
        return value, [_DOUBLE_ENCODED, *inner_notes]
    decoder = json.JSONDecoder()
    key = _LIST_KEY.search(body)
    # A complete JSON value inside prose. When the text has a "responses": [ only a value that
    # encloses it will do: an item decoded on its own would pass for a one-item answer.
    for n, match in enumerate(re.finditer(r"[\[{]", body)):
        if (key and match.start() > key.start()) or n >= _MAX_STARTS:
            break
        try:
            value, end = decoder.raw_decode(body, match.start())
        except _JSON_ERRORS:
            continue
        if (key and end <= key.start()) or not _worth_reading(value):
            continue
        return value, [_AROUND]
    # Python-literal style answers (single quotes, True/None), first bracket to last.
    first = re.search(r"[\[{]", body)
    last = max(body.rfind("}"), body.rfind("]"))
    if first and last > first.start():
        try:
            value = ast.literal_eval(body[first.start(): last + 1])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = None
        if _worth_reading(value):
            return value, ["read a Python literal, not JSON"]
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
                return value, [_AROUND, _DOUBLE_ENCODED, *inner_notes]
    # Broken or truncated JSON: keep the complete items of the responses list.
    start = key.end() - 1 if key else body.find("[")
    if start >= 0:
        items = _salvage_list(body, start)
        if _worth_reading(items):
            value = {"responses": items}
            reasoning = re.search(r'"reasoning"\s*:\s*"((?:[^"\\]|\\.)*)"', body[:start])
            if reasoning:
                try:
                    value["reasoning"] = json.loads('"' + reasoning.group(1) + '"')
                except ValueError:
                    pass
            return value, [f"the JSON is broken or truncated; kept the {len(items)} complete item(s) before the break"]
    raise ValueError("no JSON object or list found")


def _listed(value: dict) -> list | None:
    """The candidates list of an object, under the first of LIST_KEYS that holds a list."""
    return next((value[key] for key in LIST_KEYS if isinstance(value.get(key), list)), None)


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
        reasoning = _reasoning_of(inner)
        listed = _listed(inner)
        if listed is not None:
            return listed, reasoning, f"{name!r}"
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
    reasoning = _reasoning_of(value)
    listed = _listed(value)
    if listed is not None:
        return listed, reasoning, None
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


def candidates(text: Any, finish_reason: str | None = None) -> tuple[list[tuple[str, Any]], str | None, list[str]]:
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
    NaN, several numbers, a missing field) weighs 0 and is noted. Then per list
    (docs/algorithms.md §6.2): a list whose bare numbers exceed 1 (one above 1 is enough) while
    none is above 100 is written in percent and read so, every bare number divided by 100 (a
    model that switches to percentages does so for the whole list), which keeps their ratios:
    40/30/20/10 is 0.4/0.3/0.2/0.1 (clipping each to 1, as the public package does, would make
    it uniform). A list with a number above 100 is no percentage list either: values above 1 are
    clipped to 1. Negatives become 0. Duplicate texts are merged (weights added), the filter
    below reads these repaired weights, and the survivors are normalised to sum to 1.

    - ``k``: the number of items asked for; a different number is noted in ``repairs``.
    - ``min_probability``: keep items whose stated (repaired) probability is >= it; if fewer
      than ``min_k_survivors`` pass, keep the ``min_k_survivors`` most probable instead.
    - ``all_zero``: when every weight is zero, missing or invalid: "uniform" draws uniformly
      (noted), "error" raises.
    - ``finish_reason``: the engine's; "length" is noted (a truncated answer keeps its complete
      items).

    Raises :class:`VSParseError` naming the problem when no candidate text can be recovered.
    """
    rules = RepairRules(min_probability, min_k_survivors, all_zero)
    pairs, reasoning, notes = candidates(text, finish_reason)
    return to_distribution(pairs, notes=notes, reasoning=reasoning, raw=text, meta=dict(meta or {}), k=k, rules=rules)
