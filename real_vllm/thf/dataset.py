"""The THF data folder: per-token entropies of a model family on a corpus, in shards.

docs/algorithms.md §2.1: THF learns from the entropies (nats) that every member of a family
sharing one tokenizer assigns to the same text, cut into 1,024-token blocks. collect.collect()
computes them into a folder of this format; load_split() reads them back for training and
evaluation; write_dataset() makes a folder from entropies computed elsewhere.

Folder layout:
    meta.json                    members (name, s, and what identifies each: path, parameter
                                 counts), ascending in s; block size; splits (blocks, shards);
                                 tokenizer fingerprint; corpus and token-stream hashes;
                                 "complete": true once every shard exists
    tokenizer/                   the family's tokenizer (save_pretrained), copied into checkpoints
    train-00000.safetensors ...  "tokens" int32 [blocks, L], "entropies" float32 [members, blocks, L]
    valid-00000.safetensors ...  the held-out split, same layout
    parts/member<m>/...          while collecting: one member's entropies of one shard

Splits: each document goes to "valid" when unit_hash(document, "real_vllm.thf.valid") (salted
SHA-256, real_vllm.utils) falls below valid_fraction (default 5%), else to "train"; the two
splits are separate token streams, so no block mixes held-out and training text. Within a
split, documents are joined with the tokenizer's EOS token (when it has one) and the stream is
cut into blocks; the tail shorter than a block is dropped. Entropy of position t =
H(p(. | tokens <= t)), every position of every block.

Files and the tokenizer folder appear by atomic rename (real_vllm.utils), so a reader or a
resumed collection never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from real_vllm.thf.corpus import Corpus
from real_vllm.thf.fingerprint import tokenizer_fingerprint
from real_vllm.utils import atomic_write, install_folder, read_versioned_json, unit_hash

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")
DATA_FORMAT = "real_vllm.thf-data"
DATA_FORMAT_VERSION = 1
DEFAULT_BLOCK = 1024
DEFAULT_VALID_FRACTION = 0.05
DEFAULT_SHARD_BLOCKS = 64  # 64 blocks of 1,024 tokens: a few minutes per member on a CPU
VALID_SALT = "real_vllm.thf.valid"
# The settings a resumed collection must share with the folder it resumes.
PLAN_KEYS = ("format", "format_version", "members", "block", "shard_blocks", "valid_fraction",
             "splits", "token_stream_sha256", "tokenizer_fingerprint")


def shard_path(out: Path, split: str, index: int) -> Path:
    return Path(out) / f"{split}-{index:05d}.safetensors"


def part_path(out: Path, member: int, split: str, index: int) -> Path:
    return Path(out) / "parts" / f"member{member}" / f"{split}-{index:05d}.safetensors"


def save_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def read_meta(data_dir: str | os.PathLike, require_complete: bool = True) -> dict:
    """meta.json of a data folder; a clear error when it is missing, foreign or unfinished."""
    folder = Path(data_dir)
    meta = read_versioned_json(folder / META_FILE, "THF data folder", DATA_FORMAT, DATA_FORMAT_VERSION,
                               f"make one with `real-vllm thf collect --out {folder} ...`")
    if require_complete and not meta.get("complete"):
        raise ValueError(f"{folder} is an unfinished collection; rerun the same `real-vllm thf collect` "
                         f"command to finish it")
    return meta


def write_meta(out: Path, meta: dict) -> None:
    atomic_write(Path(out) / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


def load_split(data_dir: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [N, L] long, entropies [members, N, L] float32) of one split of a complete folder."""
    from safetensors.torch import load_file

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(data_dir)
    meta = read_meta(folder)
    tokens, entropies = [], []
    for i in range(meta["splits"][split]["shards"]):
        path = shard_path(folder, split, i)
        try:
            shard = load_file(str(path))
        except Exception as exc:
            raise ValueError(f"shard {path} is missing or unreadable: {exc}") from exc
        if not torch.isfinite(shard["entropies"]).all():
            raise ValueError(f"shard {path} holds non-finite entropies")
        tokens.append(shard["tokens"].long())
        entropies.append(shard["entropies"])
    return torch.cat(tokens), torch.cat(entropies, dim=1)


def document_split(document: str, valid_fraction: float) -> str:
    """"valid" or "train": the split a document goes to (the salted hash of its text)."""
    return "valid" if unit_hash(document, VALID_SALT) < valid_fraction else "train"


def tokenize_splits(tokenizer, corpus: Corpus, block: int, max_tokens: int | None,
                    valid_fraction: float) -> dict[str, torch.Tensor]:
    """Split documents by hash, tokenise, join with EOS, cut into [N, block] per split.

    max_tokens caps the corpus by whole documents, in corpus order, before the split.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    streams: dict[str, list[int]] = {s: [] for s in SPLITS}
    total, chunk = 0, 256
    for start in range(0, len(corpus.documents), chunk):
        if max_tokens is not None and total >= max_tokens:
            break
        docs = corpus.documents[start:start + chunk]
        for doc, ids in zip(docs, tokenizer(docs, add_special_tokens=False)["input_ids"]):
            if max_tokens is not None and total >= max_tokens:
                break
            streams[document_split(doc, valid_fraction)].extend(ids + eos)
            total += len(ids) + len(eos)
    blocks = {}
    for split, stream in streams.items():
        n = len(stream) // block
        if n == 0:
            raise ValueError(f"the corpus gives no full {block}-token block for the {split!r} split "
                             f"({len(stream)} tokens); use more text, a larger max_tokens or a smaller block")
        blocks[split] = torch.tensor(stream[:n * block], dtype=torch.int32).view(n, block)
    return blocks


def stream_hash(blocks: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the splits' int32 token blocks: the data's identity in meta.json and in a
    checkpoint's training recipe."""
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode())
        h.update(blocks[split].numpy().tobytes())
    return h.hexdigest()


def save_tokenizer(out: Path, tokenizer) -> dict:
    """The folder's tokenizer/ (written beside it, renamed into place; kept if already there) and
    its meta.json record: fingerprint, vocabulary size, files."""
    out = Path(out)
    target = out / TOKENIZER_DIR
    if not target.is_dir():
        for stale in out.glob(f".{TOKENIZER_DIR}.tmp-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out / f".{TOKENIZER_DIR}.tmp-{os.getpid()}"
        tokenizer.save_pretrained(str(tmp))
        install_folder(tmp, target, lambda folder: folder.is_dir())
        shutil.rmtree(tmp, ignore_errors=True)  # there when another writer installed first
    files = sorted(p.name for p in target.iterdir() if p.is_file())
    return {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer), "files": files}


def start_or_resume(out: Path, plan: dict) -> None:
    """Write the plan as an unfinished meta.json, or check that an existing one has the same plan."""
    path = out / META_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in PLAN_KEYS if old.get(k) != plan[k]]
        if diff:
            raise ValueError(f"{out} holds a collection made with other settings (differs in {diff}); "
                             f"use a new output folder or delete this one")
        return
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and has no {META_FILE}; not writing into it")
    out.mkdir(parents=True, exist_ok=True)
    write_meta(out, {**plan, "complete": False})


def merge_parts(out: Path, blocks: dict, shards: list, n_members: int, shard_blocks: int) -> None:
    """Each shard's final file from its members' part files (then removed), where not yet made."""
    from safetensors.torch import load_file

    for split, i in shards:
        final = shard_path(out, split, i)
        if final.is_file():
            continue
        parts = [part_path(out, m, split, i) for m in range(n_members)]
        ents = torch.stack([load_file(str(p))["entropies"] for p in parts])
        tokens = blocks[split][i * shard_blocks:(i + 1) * shard_blocks]
        save_tensors(final, {"tokens": tokens, "entropies": ents})
        for p in parts:
            p.unlink()
    parts_dir = out / "parts"
    if parts_dir.is_dir():
        for d in sorted(parts_dir.iterdir()):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if not any(parts_dir.iterdir()):
            parts_dir.rmdir()


def write_dataset(out_dir: str | os.PathLike, tokenizer, members: Sequence[tuple[str, float]],
                  splits: dict[str, tuple[torch.Tensor, torch.Tensor]], *, name: str = "external",
                  shard_blocks: int = DEFAULT_SHARD_BLOCKS) -> Path:
    """A complete data folder from entropies computed elsewhere (another machine, a simulation).

    members: (name, s) pairs in ascending s; splits: {"train": (tokens [N, L], entropies
    [members, N, L]), "valid": (...)}. The tokenizer is a transformers tokenizer object.
    """
    out = Path(out_dir)
    if (out / META_FILE).exists():
        raise FileExistsError(f"{out} already holds a THF data folder")
    sizes = [float(s) for _, s in members]
    if sizes != sorted(sizes):
        raise ValueError("members must be in ascending size")
    if set(splits) != set(SPLITS):
        raise ValueError(f"splits must be exactly {SPLITS}")
    block = next(iter(splits.values()))[0].shape[1]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_record = save_tokenizer(out, tokenizer)
    meta = {
        "format": DATA_FORMAT, "format_version": DATA_FORMAT_VERSION,
        "members": [{"name": n, "s": s} for n, s in members], "sizes": sizes, "block": block,
        "shard_blocks": shard_blocks, "splits": {}, "corpus": {"name": name},
        "tokenizer_fingerprint": tokenizer_record["fingerprint"],
        "tokenizer": tokenizer_record,
        "tokenizer_vocab_size": len(tokenizer),
        "token_stream_sha256": stream_hash({k: v[0].to(torch.int32) for k, v in splits.items()}),
    }
    for split, (tokens, ents) in splits.items():
        if tokens.shape[1] != block or ents.shape != (len(members), *tokens.shape):
            raise ValueError(f"{split}: tokens {tuple(tokens.shape)} and entropies {tuple(ents.shape)} "
                             f"do not match {len(members)} members and block {block}")
        n_shards = math.ceil(len(tokens) / shard_blocks)
        for i in range(n_shards):
            sl = slice(i * shard_blocks, (i + 1) * shard_blocks)
            save_tensors(shard_path(out, split, i), {"tokens": tokens[sl].to(torch.int32),
                                                      "entropies": ents[:, sl].to(torch.float32)})
        meta["splits"][split] = {"blocks": len(tokens), "tokens": tokens.numel(), "shards": n_shards}
    write_meta(out, {**meta, "complete": True})
    return out
