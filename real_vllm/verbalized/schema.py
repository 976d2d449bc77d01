"""The answer's format for structured outputs: a JSON schema, the regex vLLM enforces, and the
answer's length bound.

Why a regex rather than the JSON schema for vLLM: vLLM's JSON-schema constraint lets the model put
any amount of whitespace between tokens unless the *server* was started with
``disable_any_whitespace`` (a per-request flag is ignored by the xgrammar backend), and a small
model can emit newlines until max_tokens, which truncates the JSON. The regex accepts exactly the
compact JSON texts valid under the schema, with bounded strings and at most 6 decimals per
probability, so the answer has a known maximum length (:func:`answer_max_tokens`) and, given that
many tokens, always completes and parses. Servers that are not vLLM get the JSON schema through
``response_format``; servers with neither get the prompt alone and the tolerant parser.
"""

from __future__ import annotations

from typing import Any

from real_vllm.verbalized.options import (
    DEFAULT_K, DEFAULT_MAX_REASONING_CHARS, DEFAULT_MAX_TEXT_CHARS, check_chars, check_k,
)

# A JSON string's characters: anything but a quote, a backslash or a control character, i.e. no
# escapes, as xgrammar itself writes strings with a maxLength. Why: a bounded repetition of one
# character class costs ~0.02 ms a token in xgrammar's matcher, but of "class | escape" ~200 ms
# (measured with SmolLM2's 49k vocabulary at 300 characters), which would make decoding crawl.
# The price: candidates carry no newlines or straight double quotes.
_CHAR = r'[^"\\\x00-\x1f]'
# The first character is not whitespace: a response that starts blank is one the parser strips,
# and an all-blank one it drops. The class adds what str.strip() removes above U+001F, as literal
# characters, which both Python's re and vLLM's backends read.
_UNICODE_SPACES = " \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_FIRST_CHAR = r'[^"\\\x00-\x1f' + _UNICODE_SPACES + ']'
# 0, 0.x..., 1, 1.0...: at most 6 decimals keeps every probability at most 8 characters.
_PROB = r'(?:0(?:\.[0-9]{1,6})?|1(?:\.0{1,6})?)'
_PROB_MAX_CHARS = 8
# The most bytes one character takes in UTF-8.
_MAX_CHAR_BYTES = 4


def answer_schema(n_items: int = DEFAULT_K, *, reasoning: bool = False,
                  max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
                  max_reasoning_chars: int | None = DEFAULT_MAX_REASONING_CHARS) -> dict:
    """JSON schema of one answer: {"reasoning"?, "responses": [{"text", "probability"}] * n_items}."""
    n_items = check_k(n_items, "n_items")
    text: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_text_chars is not None:
        text["maxLength"] = check_chars(max_text_chars, "max_text_chars")
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
            properties["reasoning"]["maxLength"] = check_chars(max_reasoning_chars, "max_reasoning_chars")
    properties["responses"] = {"type": "array", "items": item, "minItems": n_items, "maxItems": n_items}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _string_regex(max_chars: int) -> str:
    return '"' + _FIRST_CHAR + _CHAR + "{0,%d}" % (max_chars - 1) + '"'


def answer_regex(n_items: int = DEFAULT_K, *, reasoning: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                 max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS) -> str:
    """A regex for the compact JSON texts valid under :func:`answer_schema`.

    Every match parses with ``json.loads`` and validates against the schema with the same
    arguments; the regex is narrower (no whitespace, at most 6 decimals, no escapes in strings)
    so that the answer's length is bounded and xgrammar's matcher stays fast. Works with Python's
    ``re`` and with vLLM's regex backends.
    """
    n_items = check_k(n_items, "n_items")
    text = _string_regex(check_chars(max_text_chars, "max_text_chars"))
    item = r'\{"text":' + text + r',"probability":' + _PROB + r'\}'
    head = r'\{'
    if reasoning:
        head += r'"reasoning":' + _string_regex(check_chars(max_reasoning_chars, "max_reasoning_chars")) + ","
    return head + r'"responses":\[' + item + ("," + item) * (n_items - 1) + r'\]\}'


def answer_max_tokens(n_items: int = DEFAULT_K, *, reasoning: bool = False,
                      max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                      max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS) -> int:
    """An upper bound on the tokens of any answer matching :func:`answer_regex`, plus the EOS.

    Every generated token decodes to at least one byte, and every string character is at most 4
    bytes in UTF-8, so bytes bound tokens. Real answers are far shorter (about 4 characters a token in
    English); the bound is what makes "never truncated" a guarantee rather than a hope.
    """
    n_items = check_k(n_items, "n_items")
    fixed = len('{"responses":[]}') + n_items * len('{"text":"","probability":}') + (n_items - 1)
    strings = n_items * max_text_chars
    if reasoning:
        fixed += len('"reasoning":"",')
        strings += max_reasoning_chars
    return fixed + _MAX_CHAR_BYTES * strings + n_items * _PROB_MAX_CHARS + 1
