"""Tokenizer fingerprints: one hash that says whether two tokenizers split text alike.

A THF checkpoint and a THF data folder both record the fingerprint of the tokenizer their token
ids come from (docs/algorithms.md §2.1: the family shares one tokenizer), so a checkpoint whose
tokenizer files were changed, or a data folder tokenised otherwise, is refused instead of read
as other ids. The serving path (checking a checkpoint's tokenizer) and the training side
(collecting and writing data folders) both use it.
"""

from __future__ import annotations

import hashlib
import json


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's full definition (vocabulary, merges, normalisation, special tokens).

    Two tokenizers with equal fingerprints split every text into the same ids.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
    else:  # a slow (pure-Python) tokenizer: its vocabulary and special tokens
        definition = {"vocab": tokenizer.get_vocab()}
    definition["special_tokens"] = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode("utf-8")).hexdigest()
