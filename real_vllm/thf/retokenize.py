"""REAL with a THF whose tokenizer is not the served model's (docs/algorithms.md §2.2, step 1):
decode the served tokens to text and re-tokenise the text with the THF tokenizer.

Chang et al. (arXiv 2406.07735) serve one Pythia-family THF for LLMs of other families this
way. Each request keeps a ``TextHistory``, so a step costs the same at token 10 and 10,000:

- only the new served tokens are decoded, together with a few already decoded ones
  (``CONTEXT_TOKENS``) whose text is then subtracted: the way vLLM's incremental detokenizer
  gets SentencePiece word starts and multi-byte characters right. Tokens that end inside a
  character are decoded again with the next ones; meanwhile the text reads up to the last
  complete character.
- only the last ``TAIL_CHARS_PER_TOKEN * window`` characters are re-tokenised, cut at a
  whitespace so that the THF tokenizer's pre-tokeniser splits the tail where it splits the whole
  text, and the first THF token of a cut tail is dropped. The window then equals the last
  ``window`` THF tokens of the whole re-tokenised text whenever they fit in the tail
  (tests/test_retokenize.py checks it on real text, multi-byte characters included).

All rows of a step go through one batched decode and one batched encode (the Rust tokenizers).

What the THF reads: the sequence's plain text. The served tokenizer's special tokens (chat-
template markers such as ``<|im_start|>``, ``<|eot_id|>``, BOS/EOS) are dropped before decoding
(the authors' code decodes with ``skip_special_tokens=True`` too), and the text is encoded with
``add_special_tokens=False``. The THF is trained on plain text (Wikipedia, real_vllm/thf/dataset.py:
documents tokenised with ``add_special_tokens=False``, joined by EOS, cut into blocks with no
BOS): it has never seen a chat marker, neither as the marker's characters spelled out in its
own vocabulary (what decoding with ``skip_special_tokens=False`` gave) nor as its own special
token (what the THF tokenizer makes of the marker's text when it shares the marker, as SmolLM2's
does with ``<|im_start|>``), and no window of its training data starts with a BOS, so the
forecast is only in distribution on the text itself. (For the Pythia and SmolLM2 tokenizers
``add_special_tokens=True``, the original's encode, adds nothing either.) The special ids are
filtered out of the served ids rather than skipped by the decoder so that the few already
decoded tokens kept as context are text tokens: a SentencePiece decoder strips the leading
space of the first decoded token, which would otherwise glue a word to the text before a run of
markers. Special tokens still count as sequence positions (``fed``), and a prompt's tail of
``TAIL_CHARS_PER_TOKEN * window`` served tokens holds that many less text tokens.
"""

from __future__ import annotations

import os

CONTEXT_TOKENS = 4  # decoded again with the new tokens, then subtracted
TAIL_CHARS_PER_TOKEN = 16  # characters of text kept per THF window token
MAX_PENDING = 8  # served tokens held back for an incomplete character before giving up
REPLACEMENT = "\ufffd"


def special_token_ids(tokenizer) -> frozenset[int]:
    """The ids a decoder with ``skip_special_tokens=True`` drops: the special tokens map's
    (``all_special_ids``) and every added token marked special (chat-template markers that a
    tokenizer.json declares without listing them in the map)."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, tok in added.items() if getattr(tok, "special", False))
    return frozenset(int(i) for i in ids)


class TextHistory:
    """One request's sequence as text, built up step by step."""

    __slots__ = ("fed", "context", "pending", "held", "text", "cut")

    def __init__(self):
        self.fed = 0  # served tokens taken so far (the sequence position reached)
        self.context: list[int] = []  # the last decoded served tokens
        self.pending: list[int] = []  # served tokens not yet in ``text`` (they end inside a character)
        self.held = ""  # the complete characters of ``pending``'s text, read but not committed
        self.text = ""
        self.cut = False  # ``text`` starts after the sequence's start


class Retokenizer:
    """Served token ids -> THF windows, for a pair of tokenizers."""

    def __init__(self, served_tokenizer, thf_tokenizer, window: int):
        self.served = served_tokenizer
        self.thf = thf_tokenizer
        self.window = window
        self.tail_chars = TAIL_CHARS_PER_TOKEN * window
        self.special_ids = special_token_ids(served_tokenizer)

    def start(self, history: TextHistory, length: int) -> int:
        """Where the served tokens to feed next begin, for a sequence of ``length`` tokens: a new
        history reads only the tail of its prompt (each token is at least a character or a byte)."""
        if history.fed == 0 and length > self.tail_chars:
            history.fed = length - self.tail_chars
            history.cut = True
        return history.fed

    def windows(self, histories: list[TextHistory], new_ids: list[list[int]]) -> list[list[int]]:
        """Feed each history its served tokens from ``start`` on; the THF ids of each row's window."""
        todo = []
        for h, ids in zip(histories, new_ids):
            h.fed += len(ids)
            h.pending.extend(t for t in ids if t not in self.special_ids)
            if h.pending:
                todo.append(h)
        if todo:
            decode = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
            with_new = self.served.batch_decode([h.context + h.pending for h in todo], **decode)
            before = self.served.batch_decode([h.context for h in todo], **decode)
            for h, full, old in zip(todo, with_new, before):
                new = _extension(full, old)
                if new.endswith(REPLACEMENT):
                    # Hold back only the tokens that end inside the last character (a long first
                    # feed commits the complete characters before them), for at most MAX_PENDING.
                    incomplete = self._incomplete_tail(h, old, decode)
                    if incomplete < MAX_PENDING:
                        if incomplete < len(h.pending):
                            done = h.pending[:-incomplete]
                            self._commit(h, _extension(self.served.decode(h.context + done, **decode), old), done)
                            h.pending = h.pending[-incomplete:]
                            new = _extension(self.served.decode(h.context + h.pending, **decode),
                                             self.served.decode(h.context, **decode))
                        h.held = new.rstrip(REPLACEMENT)
                        continue
                self._commit(h, new, h.pending)
                h.pending = []
        tails = [self._tail(h) for h in histories]
        encoded = self.thf([t for t, _ in tails], add_special_tokens=False)["input_ids"]
        return [(ids[1:] if cut else ids)[-self.window:] for ids, (_, cut) in zip(encoded, tails)]

    def _incomplete_tail(self, h: TextHistory, old: str, decode: dict) -> int:
        """How many of the last pending tokens end inside a character: the fewest whose removal
        leaves text that ends with a complete character (all of them if none does)."""
        for n in range(1, len(h.pending)):
            if not _extension(self.served.decode(h.context + h.pending[:-n], **decode), old).endswith(REPLACEMENT):
                return n
        return len(h.pending)

    def _commit(self, h: TextHistory, text: str, tokens: list[int]) -> None:
        """Append ``text``, the decoded ``tokens``, to the history's committed text."""
        h.text, h.held = h.text + text, ""
        h.context = (h.context + tokens)[-CONTEXT_TOKENS:]
        if len(h.text) > 4 * self.tail_chars:  # keep memory bounded; the tail is all we read
            h.text, h.cut = h.text[-2 * self.tail_chars:], True

    def _tail(self, h: TextHistory) -> tuple[str, bool]:
        """The text to re-tokenise and whether it starts after the sequence's start."""
        text = h.text + h.held
        if len(text) <= self.tail_chars and not h.cut:
            return text, False
        tail = text[-self.tail_chars:]  # may begin inside a word: start at the next word break
        space = next((i for i in range(1, len(tail)) if tail[i].isspace() and not tail[i - 1].isspace()), 0)
        return tail[space:], True


def _extension(full: str, old: str) -> str:
    """The text ``full`` adds to ``old``. Byte-level and SentencePiece decoders both extend the
    context's text; anything else (a normaliser rewriting it) falls back to the longest common
    prefix."""
    start = len(old) if full.startswith(old) else len(os.path.commonprefix([full, old]))
    return full[start:]
