"""THF inside the vLLM worker: load once, then one batched forward per decode step.

REAL (arXiv 2406.07735, docs/algorithms.md §2.2): for every REAL row, the THF reads the last
``window`` tokens (prompt + output so far) and predicts the entropy curve at the last
position; the residual entropy d = E(s_ref) - c sets the row's nucleus threshold.

A block-window THF is recomputed on each row's last ``window`` tokens every step. A
sliding-window one (THFConfig.attention == "sliding") is served incrementally: the processor
keeps its per-request key/value cache (thf/incremental.py, ``new_cache``) and computes only the
new tokens; the cross-tokenizer path still recomputes it, on its receptive field
(``context`` tokens), which gives the same function.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from real_vllm.thf import curves
from real_vllm.thf.model import THFCheckpointError, THFModel, load_tokenizer, predict_last_of_windows
from real_vllm.thf.retokenize import Retokenizer

# The checkpoints shipped with the package, one folder each; "smollm2" (for the embedded default
# model) is the default when present.
CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"
SHIPPED_CHECKPOINT = CHECKPOINTS_DIR / "smollm2"
ENV_CHECKPOINT = "REAL_VLLM_THF"


def shipped_checkpoints() -> dict[str, Path]:
    """The shipped THF checkpoints by name (their folder names under real_vllm/thf/checkpoints/)."""
    if not CHECKPOINTS_DIR.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(CHECKPOINTS_DIR.iterdir())
            if (folder / "thf_config.json").is_file()}


def checkpoint_path(name_or_path: str | os.PathLike) -> Path:
    """The folder a --real-thf value names: an existing path as is (the loader judges it), else a
    shipped checkpoint's name (see shipped_checkpoints); anything else is a ValueError that lists
    the shipped names."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_checkpoints()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise ValueError(f"real_vllm: cannot load the THF checkpoint for REAL: {name_or_path} does not exist, and it "
                     f"is not the name of a shipped checkpoint (shipped: {', '.join(shipped) or 'none'}); "
                     f"--real-thf (or ${ENV_CHECKPOINT}) takes a checkpoint folder or one of those names")


def resolve_checkpoint(explicit: str | os.PathLike | None = None) -> tuple[Path | None, bool]:
    """The THF to serve and whether the user chose it: --real-thf / additional_config, else
    $REAL_VLLM_THF, else the shipped default (None when there is none). A chosen value is a
    folder or a shipped checkpoint's name (checkpoint_path); ValueError for anything else."""
    for candidate in (explicit, os.environ.get(ENV_CHECKPOINT)):
        if candidate:
            return checkpoint_path(candidate), True
    return (SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.is_dir() else None), False


def right_aligned_windows(sequences: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``width`` tokens of each sequence, right-aligned in a [R, width] tensor (left
    padding with 0), and the real lengths [R]: the THF's input for each REAL row."""
    windows = torch.zeros(len(sequences), width, dtype=torch.long)
    lengths = torch.empty(len(sequences), dtype=torch.long)
    for i, seq in enumerate(sequences):
        recent = seq[-width:]
        lengths[i] = len(recent)
        if recent:
            windows[i, width - len(recent):] = torch.tensor(recent)
    return windows, lengths


class TokenizerMismatch(ValueError):
    """The THF was trained with another tokenizer than the served model's."""


class THFRuntime:
    """A loaded THF and the residual entropy of batches of token windows. ``retokenizer`` is
    set when the served model's tokenizer is another one: windows then come from its text."""

    def __init__(self, model: THFModel, device: torch.device, retokenizer: Retokenizer | None = None):
        self.model = model
        self.config = model.config
        self.window = self.config.window
        # Tokens a recomputed forward reads: the window, or a sliding THF's receptive field.
        self.context = self.config.context
        self.incremental = self.config.sliding and retokenizer is None
        self.device = device
        self.retokenizer = retokenizer

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device, tokenizer: str | None = None,
             retokenize: bool = False) -> THFRuntime:
        """Load a checkpoint for a server whose model uses ``tokenizer`` (a folder or name).

        Fails at start-up, with what to do, for a missing or corrupt checkpoint, a tokenizer
        other than the served model's (unless ``retokenize``: the cross-tokenizer path), or a
        window longer than the THF's context.
        """
        try:
            model = THFModel.load(path, device=device)
        except THFCheckpointError as e:
            raise ValueError(f"real_vllm: cannot load the THF checkpoint for REAL: {e}") from None
        config = model.config
        context = config.backbone.get("max_position_embeddings", config.window)
        # A sliding THF's attention is relative within its window: it runs at any position.
        if not config.sliding and config.window > context:
            raise ValueError(
                f"real_vllm: the THF window ({config.window} tokens) is longer than its "
                f"context ({context}); retrain with a shorter window"
            )
        retokenizer = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            served = AutoTokenizer.from_pretrained(tokenizer)
            thf_tokenizer = load_tokenizer(path)
            if served.get_vocab() != thf_tokenizer.get_vocab():
                if not retokenize:
                    raise TokenizerMismatch(
                        f"real_vllm: the THF at {path} was trained with another tokenizer than the "
                        f"served model's ({tokenizer}). Pass --real-retokenize to re-tokenise the "
                        "served text with the THF's tokenizer (docs/algorithms.md §2.2; costs a decode and "
                        "an encode per REAL row and step), or train a THF on a family with the served "
                        "model's tokenizer (`real-vllm thf collect/train`, see the README)"
                    )
                retokenizer = Retokenizer(served, thf_tokenizer, config.context)
        return cls(model, torch.device(device), retokenizer)

    def curve_params(self, windows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """THF outputs [R, K] at the last token of each right-aligned window.

        windows: [R, context] token ids, left-padded; lengths: [R] real tokens per row (>= 1).
        """
        return predict_last_of_windows(self.model, windows, lengths)

    def residual_entropy(self, windows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """d = E(s_ref) - c at the last token of each window (see curve_params)."""
        return self.residual_entropy_of(self.curve_params(windows, lengths))

    def residual_entropy_of(self, params: torch.Tensor) -> torch.Tensor:
        """d = E(s_ref) - c of THF outputs [..., K]."""
        return curves.residual_entropy(params, self.config.s_ref, self.config.curve)

    def new_cache(self, num_slots: int):
        """A sliding THF's per-request key/value cache for ``num_slots`` slots."""
        from real_vllm.thf.incremental import SlidingKVCache

        return SlidingKVCache(self.model, num_slots, self.device)
