"""Computing THF's training labels: the per-token entropies of every member of a model family.

docs/algorithms.md §2.1: the labels are the next-token entropies (nats) of every family member
on the same text, each member placed on the size axis by s = ln(non-embedding parameter count).
collect() runs member by member (one model in memory at a time) into a data folder
(real_vllm/thf/dataset.py), one part file per (member, shard), and merges a shard's parts into
its final file once every member has it. Files appear by atomic rename, so a killed run
restarts where it stopped; a folder made with other settings (members, block, corpus,
tokenizer) is refused rather than mixed.

A family is a sequence of FamilyMember objects: a name, a meta.json record with at least "name"
and "s", a tokenizer, and a loader that gives the member's entropies of token blocks. The
paper's family is separate causal LMs of one tokenizer (HFCausalLM, from folders); other
families only need another FamilyMember: real_vllm/thf/lens.py's depth family reads one model at
several depths through its tuned lens (LensLayer members, then the model itself).
"""

from __future__ import annotations

import abc
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from real_vllm.thf.corpus import Corpus, read_corpus
from real_vllm.thf.dataset import (
    DATA_FORMAT, DATA_FORMAT_VERSION, DEFAULT_BLOCK, DEFAULT_SHARD_BLOCKS, DEFAULT_VALID_FRACTION, SPLITS,
    merge_parts, part_path, save_tensors, save_tokenizer, shard_path, start_or_resume, stream_hash,
    tokenize_splits, write_meta,
)
from real_vllm.thf.device import resolve_device, resolve_dtype
from real_vllm.thf.fingerprint import tokenizer_fingerprint

# Entropies of full blocks: token ids [B, L] long on the device -> [B, L] float32 nats.
EntropyFn = Callable[[torch.Tensor], torch.Tensor]


def logits_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropies (nats, float32 math) of logits [B, L, V] -> [B, L].

    Rows go through the float32 softmax one at a time, so a batch's float32 temporaries stay one
    row's [L, V] however large the vocabulary.
    """
    out = torch.empty(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    for row in range(logits.shape[0]):
        logp = torch.log_softmax(logits[row].float(), dim=-1)
        p = logp.exp()
        # p * logp with p = 0 (a -inf logit) is 0 * -inf = NaN; such tokens contribute 0.
        out[row] = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return out


@torch.inference_mode()
def token_entropies(model, token_ids: torch.Tensor) -> torch.Tensor:
    """Next-token entropies [B, L] (nats, float32 math) of a causal LM on full blocks [B, L]."""
    return logits_entropies(model(input_ids=token_ids, use_cache=False).logits)


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


def sizes_from_config(folder: str | os.PathLike) -> dict:
    """parameter_counts of the model in `folder`, built on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return parameter_counts(model)


class FamilyMember(abc.ABC):
    """One member of a THF family: where it sits on the size axis and its per-token entropies."""

    name: str

    @abc.abstractmethod
    def record(self) -> dict:
        """The member's entry in meta.json: "name", "s" and what identifies the member (a resumed
        collection must find the same records)."""

    @abc.abstractmethod
    def tokenizer(self):
        """The transformers tokenizer whose ids the member reads."""

    @abc.abstractmethod
    def load(self, device: torch.device, dtype: torch.dtype) -> EntropyFn:
        """The member ready to run; dropping the returned function frees it."""


# The files a causal LM needs from the hub: config, tokenizer, weights (safetensors; the older
# PyTorch pickles only when a repository has no safetensors).
HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "*.safetensors"]
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_folder(name_or_folder: str | os.PathLike) -> Path:
    """The local folder of a family member: an existing folder as is, else a Hugging Face model
    name ("EleutherAI/pythia-70m-deduped") fetched once into the hub cache (where transformers'
    from_pretrained keeps it; $HF_HUB_CACHE, $HF_HUB_OFFLINE apply) and that snapshot's folder.
    Refuses anything else, naming it."""
    folder = Path(name_or_folder)
    if folder.is_dir():
        return folder
    name = str(name_or_folder)
    if not HUB_NAME.fullmatch(name):
        raise FileNotFoundError(f"family member {name}: no such folder, and not a Hugging Face model name (ORG/NAME)")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name, allow_patterns=HUB_FILES))
        if not any(snapshot.glob("*.safetensors")):
            snapshot = Path(snapshot_download(name, allow_patterns=[*HUB_FILES, "*.bin"]))
    except Exception as exc:  # huggingface_hub's errors: not found, offline, no access
        raise FileNotFoundError(f"family member {name}: no such folder, and the Hugging Face model {name!r} "
                                f"could not be fetched ({type(exc).__name__}: {exc})") from None
    return snapshot


class HFCausalLM(FamilyMember):
    """A Hugging Face causal-LM folder; s from its config's non-embedding parameter count."""

    def __init__(self, folder: str | os.PathLike, name: str | None = None):
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(f"family member {self.folder} is not a Hugging Face model folder (no config.json)")
        self.name = name or self.folder.name
        self._record: dict | None = None

    def record(self) -> dict:
        if self._record is None:
            self._record = {"name": self.name, "path": str(self.folder.resolve()), **sizes_from_config(self.folder)}
        return self._record

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.folder))

    def load(self, device: torch.device, dtype: torch.dtype) -> EntropyFn:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=dtype).to(device).eval()
        return lambda ids: token_entropies(model, ids)


def hf_family(models: Sequence[str | os.PathLike]) -> list[HFCausalLM]:
    """Members from model folders or Hugging Face names (model_folder), each named by its folder's
    or name's last part (the whole as given where those repeat)."""
    names = [Path(m).name for m in models]
    return [HFCausalLM(model_folder(m), names[i] if names.count(names[i]) == 1 else str(m))
            for i, m in enumerate(models)]


def _family_tokenizer(family: Sequence[FamilyMember]):
    """The one tokenizer every member reads, and its fingerprint; refuses a family of several."""
    tokenizers = [m.tokenizer() for m in family]
    prints = [tokenizer_fingerprint(t) for t in tokenizers]
    if len(set(prints)) > 1:
        groups = {}
        for m, fp in zip(family, prints):
            groups.setdefault(fp[:12], []).append(m.record().get("path", m.name))
        raise ValueError(f"the family members' tokenizers differ, so their entropies are not over the "
                         f"same tokens; every member must share one tokenizer. Groups by tokenizer "
                         f"fingerprint: {groups}")
    return tokenizers[0], prints[0]


def collect(
    family: Sequence[str | os.PathLike | FamilyMember],
    corpus: Corpus | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    block: int = DEFAULT_BLOCK,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_tokens: int | None = None,
    max_train_blocks: int | None = None,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    shard_blocks: int = DEFAULT_SHARD_BLOCKS,
    progress: bool = True,
) -> Path:
    """Compute every family member's per-token entropies on `corpus` into the folder `out_dir`.

    family: FamilyMember objects, or Hugging Face causal-LM folders (hf_family), sharing one
    tokenizer (at least two distinct sizes). corpus: a Corpus (e.g. corpus.wiki_corpus()) or
    files for read_corpus(). max_tokens caps the corpus (whole documents, before the split);
    max_train_blocks keeps the first that many training blocks (the valid split stays whole, so a
    smaller collection is judged on the same held-out blocks as a larger one of the same corpus).
    device: default CUDA when present, else CPU; dtype: default float32 on CPU, bfloat16 on GPU
    (the entropy math is float32 either way).
    Returns `out_dir`; rerunning the same call resumes or returns at once when complete.
    """
    from tqdm.auto import tqdm

    if len(family) < 2:
        raise ValueError("a THF family needs at least two models of different sizes")
    if not all(isinstance(m, FamilyMember) for m in family):
        family = hf_family(family)
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if block < 2 or batch_size < 1 or shard_blocks < 1:
        raise ValueError("block must be >= 2, batch_size and shard_blocks >= 1")
    if max_train_blocks is not None and max_train_blocks < 1:
        raise ValueError(f"max_train_blocks must be >= 1, got {max_train_blocks}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    out = Path(out_dir)

    tokenizer, fingerprint = _family_tokenizer(family)
    family = sorted(family, key=lambda m: m.record()["s"])
    if len({round(m.record()["s"], 9) for m in family}) < 2:
        raise ValueError("the family members all have the same size; THF needs at least two sizes")
    members = [m.record() for m in family]

    if not isinstance(corpus, Corpus):
        corpus = read_corpus(corpus)
    blocks = tokenize_splits(tokenizer, corpus, block, max_tokens, valid_fraction)
    corpus_record = {"name": corpus.name, "documents": len(corpus.documents), "max_tokens": max_tokens}
    if max_train_blocks is not None:  # only when given: folders made before the option resume
        blocks["train"] = blocks["train"][:max_train_blocks]
        corpus_record["max_train_blocks"] = max_train_blocks
    plan = {
        "format": DATA_FORMAT, "format_version": DATA_FORMAT_VERSION,
        "members": members, "sizes": [m["s"] for m in members], "block": block,
        "shard_blocks": shard_blocks, "valid_fraction": valid_fraction,
        "splits": {s: {"blocks": len(blocks[s]), "tokens": blocks[s].numel(),
                       "shards": math.ceil(len(blocks[s]) / shard_blocks)} for s in SPLITS},
        "corpus": corpus_record,
        "token_stream_sha256": stream_hash(blocks),
        "tokenizer_fingerprint": fingerprint,
        "entropy": "nats, H(p(. | tokens <= t)) at every position t of every block",
    }
    start_or_resume(out, plan)
    plan["tokenizer"] = save_tokenizer(out, tokenizer)
    plan["tokenizer_vocab_size"] = len(tokenizer)

    shards = [(s, i) for s in SPLITS for i in range(plan["splits"][s]["shards"])]
    for m, member in enumerate(family):
        todo = [(s, i) for s, i in shards
                if not shard_path(out, s, i).is_file() and not part_path(out, m, s, i).is_file()]
        if not todo:
            continue
        entropies = member.load(device, dtype)
        n_blocks = sum(len(blocks[s][i * shard_blocks:(i + 1) * shard_blocks]) for s, i in todo)
        bar = tqdm(total=n_blocks * block, desc=f"entropies {member.name} (s={members[m]['s']:.2f})",
                   unit="tok", unit_scale=True, disable=not progress)
        for split, i in todo:
            shard = blocks[split][i * shard_blocks:(i + 1) * shard_blocks]
            ents = []
            for start in range(0, len(shard), batch_size):
                ids = shard[start:start + batch_size].to(device=device, dtype=torch.long)
                ents.append(entropies(ids).cpu())
                bar.update(ids.numel())
            save_tensors(part_path(out, m, split, i), {"entropies": torch.cat(ents)})
        bar.close()
        del entropies
        if device.type == "cuda":
            torch.cuda.empty_cache()

    merge_parts(out, blocks, shards, len(members), shard_blocks)
    plan["complete"] = True
    write_meta(out, plan)
    return out


def mean_entropies(data_dir: str | os.PathLike, split: str = "valid") -> dict:
    """Each member's mean entropy over a split of a data folder, in ascending size, whether each
    falls below the previous member's, and whether they all do (family.py's check, per member)."""
    from real_vllm.thf.dataset import load_split, read_meta

    meta = read_meta(data_dir)
    _, entropies = load_split(data_dir, split)
    means = entropies.double().mean(dim=(1, 2)).tolist()
    members = [{"name": m["name"], "s": m["s"], "mean_entropy": round(h, 4),
                "falls": None if j == 0 else h < means[j - 1]}
               for j, (m, h) in enumerate(zip(meta["members"], means))]
    return {"split": split, "members": members,
            "entropy_decreases_with_size": all(a > b for a, b in zip(means, means[1:]))}
