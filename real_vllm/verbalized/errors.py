"""The two ways Verbalized Sampling fails: an answer with no usable distribution, a server that
refuses every way of asking."""

from __future__ import annotations

# How much of a bad answer an error message quotes.
SHOWN_ANSWER_CHARS = 300


class VSParseError(ValueError):
    """The model's answer holds no usable distribution; the message says why."""

    def __init__(self, message: str, raw: str | None = None):
        if raw is not None:
            shown = raw if len(raw) <= SHOWN_ANSWER_CHARS else raw[:SHOWN_ANSWER_CHARS] + f"... ({len(raw)} chars)"
            message = f"{message}\nanswer: {shown!r}"
        super().__init__(message)
        self.raw = raw


class VSServerError(RuntimeError):
    """The server refused every way of asking (structured outputs, response_format, plain)."""
