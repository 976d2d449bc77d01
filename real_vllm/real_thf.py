"""Whether REAL can run on a model, decided outside an engine: the apps and benchmarks that
sweep or serve REAL (real-vllm eval, benchmarks/bench_serve.py) ask here before they start one.

REAL needs a THF whose tokenizer is the served model's (the engine refuses another unless
--real-retokenize is given, which these callers do not pass). The THF is found in the engine's
own order (real_vllm.thf.runtime.resolve_checkpoint): the one named, else $REAL_VLLM_THF, else the
one shipped for the default model.
"""

from __future__ import annotations

import os
from pathlib import Path


def served_thf(model_dir: str | os.PathLike, real_thf: str | os.PathLike | None = None) -> Path | None:
    """The THF REAL would use for the model, or None when there is none or its tokenizer's
    vocabulary is not the model's."""
    from transformers import AutoTokenizer

    from real_vllm.thf.model import load_tokenizer
    from real_vllm.thf.runtime import resolve_checkpoint

    path, _ = resolve_checkpoint(real_thf)
    if path is None:
        return None
    if AutoTokenizer.from_pretrained(str(model_dir)).get_vocab() != load_tokenizer(path).get_vocab():
        return None
    return path


def real_available(model_dir: str | os.PathLike, real_thf: str | os.PathLike | None = None) -> bool:
    """Whether a THF fits the model (see served_thf)."""
    return served_thf(model_dir, real_thf) is not None
