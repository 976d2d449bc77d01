"""A tuned lens for one causal LM, and the depth family it gives THF.

Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned
Lens", arXiv 2303.08112): for a layer l of an N-layer model, one learned affine translator on the
residual stream after l layers (before the final norm), then the model's own final norm and
unembedding:

    lens_l(h) = lm_head(final_norm(h + A_l h + b_l))

A_l and b_l start at zero, so an untrained lens is the logit lens (the final norm and unembedding
applied to h_l); the translator is trained so that layer l's distribution matches the final
layer's, with KL(p_final || p_lens_l) at the same position, the model frozen. These facts were read
from the authors' public code (AlignmentResearch/tuned-lens: residual translator, zero init, KL
loss at token shift 0, gradient-norm clipping at 1); nothing is copied from it.

This project's recipe, sized for a CPU (`real-vllm thf lens`; defaults below): the lenses of every
K-th layer (`every:5` on SmolLM2-135M's 30 layers: layers 5, 10, 15, 20, 25), trained on
`tokens` tokens (8,192) of the offline wiki corpus's training documents (the documents THF's own
collection keeps for training: the same salted document split, docs/algorithms.md §2.1). The
authors train 250 SGD steps of 2^18 tokens from the identity; here a step of one 512-token block
costs about 3.5 s per layer on one loaded CPU core, so the budget is tens of steps, and from the
identity they barely move SmolLM2's lenses (16 Adam steps at lr 1e-3: held-out KL 17.5 -> 7.4
nats at layer 10). So the translators start instead from a least-squares fit (fit_translators:
forward passes only, no unembedding) of the last layer's residual stream (KL 3.8 at layer 10),
then take one pass of Adam on the paper's KL at lr 1e-4 (KL 3.2); lr 1e-3 diverges from that
start (KL 9.1): SmolLM2's residual stream has a few very large coordinates (after 20 layers, on
one sentence: coordinate 507 averages |h| = 742 against the median coordinate's 5), so small
changes of A move the output far. `init="identity"` is the paper's start. The held-out report (report.csv,
report.md in the lens folder) gives, per layer, for the logit lens, the least-squares start and
the tuned lens: cross-entropy against the next token, KL to the final layer and mean entropy
(nats), on the first `valid_tokens` tokens of held-out documents.

The depth family (docs/algorithms.md §2.1: THF learns how entropy falls with model size): layer l
read through its lens is a predictor that costs the first l layers, so its size is the
non-embedding parameter count of those layers plus the final norm (the lens runs it; the
translators are not counted: they are a read-out, like the unembedding). The model itself is the
last member, with its usual size, so `thf train` extrapolates past the full depth.

Folder layout:
    lens.json                 format, the model's fingerprint (config fields and a SHA-256 of its
                              weights), the layers, the recipe, the held-out report, wall time
    translators.safetensors   "layer<l>.weight" [d, d] and "layer<l>.bias" [d], float32
    report.csv, report.md     the held-out report
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from real_vllm.thf.collect import EntropyFn, FamilyMember, HFCausalLM, logits_entropies, sizes_from_config
from real_vllm.utils import atomic_write, install_folder, read_versioned_json, write_csv

LENS_FORMAT = "real_vllm.tuned-lens"
LENS_FORMAT_VERSION = 1
CONFIG_FILE = "lens.json"
WEIGHTS_FILE = "translators.safetensors"
DEFAULT_LAYERS = "every:5"
DEFAULT_TOKENS = 8192
DEFAULT_VALID_TOKENS = 2048
DEFAULT_BLOCK = 512
DEFAULT_LR = 1e-4
DEFAULT_INIT = "lstsq"
# Config fields that say which architecture a lens was trained on (compared before the weights).
FINGERPRINT_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")


class LensMismatchError(ValueError):
    """A tuned lens loaded for a model other than the one it was trained on."""


# --------------------------------------------------------------------------------------------
# The model's parts a lens uses


def _final_norm(model) -> torch.nn.Module:
    """The norm applied after the last layer (Llama/Qwen/Mistral `norm`, GPT-NeoX
    `final_layer_norm`, GPT-2 `ln_f`)."""
    base = model.base_model
    for name in ("norm", "final_layer_norm", "ln_f"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    raise ValueError(f"{type(model).__name__}: no final norm found (looked for norm, final_layer_norm, ln_f)")


def _decoder_layers(model) -> torch.nn.ModuleList:
    base = model.base_model
    for name in ("layers", "h"):
        if isinstance(getattr(base, name, None), torch.nn.ModuleList):
            return getattr(base, name)
    raise ValueError(f"{type(model).__name__}: no decoder layer list found (looked for layers, h)")


def model_fingerprint(model) -> dict:
    """What identifies a model for its lens: architecture fields and a SHA-256 of every weight
    (names, shapes and float32 values), so a lens is never read through another model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {**{k: getattr(model.config, k, None) for k in FINGERPRINT_FIELDS}, "weights_sha256": h.hexdigest()}


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Lens layers from `every:K` (K, 2K, ... below N), `all` (1..N-1) or `l1,l2,...`.

    Layer l is the residual stream after l layers; 0 (the embeddings) is not a predictor of any
    size and N is the model itself, so each layer must be in 1..N-1.
    """
    spec = spec.strip()
    if spec == "all":
        layers = list(range(1, num_layers))
    elif spec.startswith("every:"):
        try:
            step = int(spec[len("every:"):])
        except ValueError:
            raise ValueError(f"layers: 'every:K' needs an integer K, got {spec!r}") from None
        if step < 1:
            raise ValueError(f"layers: K in 'every:K' must be >= 1, got {step}")
        layers = list(range(step, num_layers, step))
    else:
        try:
            layers = sorted({int(x) for x in spec.split(",")})
        except ValueError:
            raise ValueError(f"layers must be 'every:K', 'all' or comma-separated layer numbers, got {spec!r}") from None
    bad = [l for l in layers if not 1 <= l < num_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 1..{num_layers - 1} (the model has {num_layers} layers; "
                         f"layer {num_layers} is the model itself)")
    if not layers:
        raise ValueError(f"layers {spec!r} selects no layer of a {num_layers}-layer model")
    return layers


def default_lens_dir(model_dir: str | os.PathLike) -> Path:
    """Where `thf lens MODEL` writes and `depth:MODEL` looks when no folder is given."""
    from real_vllm.assets import cache_dir

    folder = Path(model_dir).resolve()
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
    return cache_dir() / "lenses" / f"{folder.name}-{tag}"


# --------------------------------------------------------------------------------------------
# The lens


class TunedLens(torch.nn.Module):
    """Affine translators h -> h + A h + b, one per layer, A and b initialised to zero."""

    def __init__(self, layers: Sequence[int], hidden_size: int):
        super().__init__()
        self.layers = list(layers)
        self.translators = torch.nn.ModuleDict()
        for layer in self.layers:
            translator = torch.nn.Linear(hidden_size, hidden_size)
            torch.nn.init.zeros_(translator.weight)
            torch.nn.init.zeros_(translator.bias)
            self.translators[str(layer)] = translator

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        # Residual form (as the authors' code): weight decay or a zero init mean identity.
        return hidden + self.translators[str(layer)](hidden)

    def logits(self, model, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s logits: translator, then the model's final norm and unembedding."""
        return model.get_output_embeddings()(_final_norm(model)(self.translate(hidden, layer)))


class _Stop(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


def residual_after(model, token_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream after the first `layer` layers (before the final norm), running only
    those layers: a hook on layer `layer` - 1 ends the forward pass with its output."""
    def stop(module, args, output):
        raise _Stop(output[0] if isinstance(output, tuple) else output)

    handle = _decoder_layers(model)[layer - 1].register_forward_hook(stop)
    try:
        model.base_model(input_ids=token_ids, use_cache=False)
    except _Stop as done:
        return done.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"layer {layer} did not run")


def _kl(target_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) per position (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


# --------------------------------------------------------------------------------------------
# Saving and loading


def read_lens_config(lens_dir: str | os.PathLike) -> dict:
    folder = Path(lens_dir)
    return read_versioned_json(folder / CONFIG_FILE, "tuned-lens folder", LENS_FORMAT, LENS_FORMAT_VERSION,
                               f"train one with `real-vllm thf lens MODEL --out {folder}`")


def check_fingerprint(config: dict, fingerprint: dict, lens_dir, model_name: str) -> None:
    """Refuse a model whose fingerprint differs from the one the lens was trained on, naming what differs."""
    want = config["model"]["fingerprint"]
    fields = [k for k in FINGERPRINT_FIELDS if want.get(k) != fingerprint.get(k)]
    if fields:
        diff = ", ".join(f"{k} {want.get(k)!r} (lens) vs {fingerprint.get(k)!r} (model)" for k in fields)
        raise LensMismatchError(f"the tuned lens {lens_dir} was trained for another model ({config['model']['path']}): "
                                f"{model_name} differs in {diff}; train a lens for it with "
                                f"`real-vllm thf lens {model_name} --out DIR`")
    if want["weights_sha256"] != fingerprint["weights_sha256"]:
        raise LensMismatchError(f"the tuned lens {lens_dir} was trained for another model ({config['model']['path']}): "
                                f"{model_name} has the same architecture but other weights (weights_sha256 "
                                f"{fingerprint['weights_sha256'][:12]}... vs the lens's {want['weights_sha256'][:12]}...); "
                                f"train a lens for it with `real-vllm thf lens {model_name} --out DIR`")


def load_lens(lens_dir: str | os.PathLike, model, model_name: str | None = None) -> TunedLens:
    """The lens in `lens_dir`, after checking that `model` is the model it was trained on."""
    from safetensors.torch import load_file

    folder = Path(lens_dir)
    config = read_lens_config(folder)
    check_fingerprint(config, model_fingerprint(model), folder, model_name or str(model.config.name_or_path))
    lens = TunedLens(config["layers"], config["model"]["fingerprint"]["hidden_size"])
    state = load_file(str(folder / WEIGHTS_FILE))
    lens.translators.load_state_dict({k.replace("layer", "", 1): v for k, v in state.items()})
    return lens.eval().requires_grad_(False)


def _save(lens: TunedLens, folder: Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"layer{k}": v.detach().contiguous() for k, v in lens.translators.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))


# --------------------------------------------------------------------------------------------
# Training and the held-out report


def _lens_blocks(tokenizer, corpus, block: int, tokens: int, valid_tokens: int):
    """Training and held-out blocks: THF's document split of the corpus (train documents for the
    lens, held-out ones for the report), the first `tokens` / `valid_tokens` of each."""
    from real_vllm.thf.dataset import DEFAULT_VALID_FRACTION, tokenize_splits

    # Enough whole documents that the 5% held-out share holds valid_tokens (with room to spare).
    cap = int(max(tokens / (1 - DEFAULT_VALID_FRACTION), valid_tokens / DEFAULT_VALID_FRACTION) * 1.5)
    blocks = tokenize_splits(tokenizer, corpus, block, cap, DEFAULT_VALID_FRACTION)
    train, valid = blocks["train"], blocks["valid"]
    return train[:max(1, tokens // block)], valid[:max(1, valid_tokens // block)]


@torch.no_grad()
def fit_translators(model, lens: TunedLens, blocks: torch.Tensor, ridge: float = 1e-4, progress: bool = True) -> None:
    """Least-squares start: each translator set so that h_l + A h_l + b is the ridge fit of the
    last layer's residual stream as the final norm sees it (h_N / rms(h_N): RMSNorm and LayerNorm
    ignore a per-token scale), over every position of `blocks`. One forward pass per block, no
    unembedding; ridge is relative to the mean diagonal of the inputs' second moments."""
    from tqdm.auto import tqdm

    d = model.config.hidden_size
    moments = {l: torch.zeros(d + 1, d + 1, dtype=torch.float64) for l in lens.layers}
    cross = {l: torch.zeros(d + 1, d, dtype=torch.float64) for l in lens.layers}
    caught = []
    hook = _decoder_layers(model)[-1].register_forward_hook(
        lambda mod, args, out: caught.append(out[0] if isinstance(out, tuple) else out))
    try:
        for start in tqdm(range(len(blocks)), desc="tuned lens: least-squares start", unit="block", disable=not progress):
            caught.clear()
            hidden = model(input_ids=blocks[start:start + 1].long(), output_hidden_states=True,
                           use_cache=False).hidden_states
            last = caught[0].reshape(-1, d).double()
            target = last / last.pow(2).mean(-1, keepdim=True).sqrt()
            for l in lens.layers:
                x = hidden[l].reshape(-1, d).double()
                x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                moments[l] += x.T @ x
                cross[l] += x.T @ target
    finally:
        hook.remove()
    for l in lens.layers:
        m = moments[l]
        solution = torch.linalg.solve(m + ridge * m.diagonal().mean() * torch.eye(d + 1, dtype=m.dtype), cross[l])
        translator = lens.translators[str(l)]
        dev = translator.weight.device
        translator.weight.copy_((solution[:d].T - torch.eye(d, dtype=m.dtype)).to(dev))
        translator.bias.copy_(solution[d].to(dev))


@torch.no_grad()
def heldout_report(model, lens: TunedLens, blocks: torch.Tensor, batch_blocks: int = 1,
                   start: TunedLens | None = None) -> list[dict]:
    """Per lens layer (the logit lens, the least-squares `start` when given, the tuned lens) and
    for the model itself: mean cross-entropy against the next token, mean KL(final || layer) and
    mean entropy (nats) over `blocks`."""
    layers = lens.layers
    lenses = {"logit": TunedLens(layers, model.config.hidden_size).to(blocks.device)}
    if start is not None:
        lenses["lstsq"] = start
    lenses["tuned"] = lens
    sums = {(l, kind): torch.zeros(3, dtype=torch.float64) for l in layers for kind in lenses}
    final_sum = torch.zeros(3, dtype=torch.float64)
    n_ce = n = 0
    for start in range(0, len(blocks), batch_blocks):
        ids = blocks[start:start + batch_blocks].long()
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        final_logp = torch.log_softmax(out.logits.float(), dim=-1)

        def stats(logits):
            logp = torch.log_softmax(logits.float(), dim=-1)
            ce = -logp[:, :-1].gather(-1, ids[:, 1:, None]).sum()
            return torch.stack([ce.double(), _kl(final_logp, logits).sum().double(),
                                logits_entropies(logits).sum().double()])

        for l in layers:
            for kind, reader in lenses.items():
                sums[(l, kind)] += stats(reader.logits(model, out.hidden_states[l], l))
        final_sum += stats(out.logits)
        n += ids.numel()
        n_ce += ids[:, 1:].numel()

    def row(layer, kind, s):
        return {"layer": layer, "lens": kind, "cross_entropy": round(s[0].item() / n_ce, 4),
                "kl_to_final": round(s[1].item() / n, 4), "mean_entropy": round(s[2].item() / n, 4)}

    rows = [row(l, kind, sums[(l, kind)]) for l in layers for kind in lenses]
    rows.append(row(model.config.num_hidden_layers, "model", final_sum))
    rows[-1]["kl_to_final"] = 0.0  # exactly: the model against itself (rounding noise otherwise)
    return rows


def report_markdown(config: dict) -> str:
    """The held-out report as a markdown table, with what made it."""
    rec = config["recipe"]
    kinds = ["logit", "lstsq", "tuned"] if rec["init"] == "lstsq" else ["logit", "tuned"]
    start = ("least-squares start on the same tokens, then " if rec["init"] == "lstsq" else "identity start, then ")
    lines = [f"# Tuned lens of {Path(config['model']['path']).name}", "",
             f"{config['model']['fingerprint']['num_hidden_layers']} layers; lenses at {config['layers']}; "
             f"{rec['train_tokens']:,} training tokens ({rec['corpus']}): {start}{rec['steps']} Adam steps of "
             f"{rec['block']} tokens on KL to the final layer, lr {rec['lr']}; held out: {rec['valid_tokens']:,} "
             f"tokens of documents the lens never saw. Wall time {config['wall_seconds']} s on {config['machine']} "
             f"({rec['threads']} torch threads).", "",
             "Nats per token. logit = the final norm and unembedding on the layer's residual stream (the "
             "logit lens); " + ("lstsq = after the least-squares start; " if "lstsq" in kinds else "")
             + "tuned = after KL training. s = ln(non-embedding parameters of the first l layers and the final norm).", "",
             "| layer | s | " + " | ".join(f"CE {k}" for k in kinds) + " | " + " | ".join(f"KL {k}" for k in kinds)
             + " | " + " | ".join(f"H {k}" for k in kinds) + " |",
             "|---:|---:|" + "---:|" * (3 * len(kinds))]
    by = {(r["layer"], r["lens"]): r for r in config["report"]}
    for layer in config["layers"]:
        cells = [f"{by[(layer, k)][col]:.3f}" for col in ("cross_entropy", "kl_to_final", "mean_entropy") for k in kinds]
        lines.append(f"| {layer} | {config['sizes'][str(layer)]:.3f} | " + " | ".join(cells) + " |")
    n = config["model"]["fingerprint"]["num_hidden_layers"]
    m = by[(n, "model")]
    pad = [""] * (len(kinds) - 1)
    cells = [f"{m['cross_entropy']:.3f}", *pad, "0", *pad, f"{m['mean_entropy']:.3f}", *pad]
    lines.append(f"| {n} (model) | {config['sizes'][str(n)]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def depth_sizes(model_dir: str | os.PathLike, layers: Sequence[int]) -> dict[int, dict]:
    """Per layer l (and the model's own N): non-embedding parameters of the first l layers plus the
    final norm, and s = ln of it; at N this is collect.parameter_counts' non-embedding count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sizes_from_config(model_dir)["non_embedding_params"]
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in _decoder_layers(model)]
    n = len(per_layer)
    out = {}
    for l in [*layers, n]:
        count = total - sum(per_layer[l:])
        out[l] = {"non_embedding_params": count, "s": math.log(count)}
    return out


def train_lens(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    layers: str | Sequence[int] = DEFAULT_LAYERS,
    tokens: int = DEFAULT_TOKENS,
    valid_tokens: int = DEFAULT_VALID_TOKENS,
    block: int = DEFAULT_BLOCK,
    lr: float = DEFAULT_LR,
    init: str = DEFAULT_INIT,
    corpus=None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Train the tuned lens of the causal LM in `model_dir` into `out_dir`; returns its lens.json.

    corpus: a Corpus (default: the offline wiki's training articles, corpus.wiki_corpus("train"))
    or files for read_corpus(). A folder already holding a finished lens of the same model and
    recipe is returned as is; any other non-empty folder is refused.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from real_vllm.thf.corpus import Corpus, read_corpus, wiki_corpus
    from real_vllm.thf.device import resolve_device
    from real_vllm.utils import machine_name

    if tokens < block or valid_tokens < block:
        raise ValueError(f"tokens ({tokens}) and valid_tokens ({valid_tokens}) must each be at least one block ({block})")
    if block < 2:
        raise ValueError(f"block must be >= 2, got {block}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if init not in ("lstsq", "identity"):
        raise ValueError(f"init must be 'lstsq' or 'identity', got {init!r}")
    model_dir = Path(model_dir)
    out = Path(out_dir) if out_dir is not None else default_lens_dir(model_dir)
    device = resolve_device(device)
    t0 = time.perf_counter()
    torch.manual_seed(seed)

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    model.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    layer_list = parse_layers(layers, n_layers) if isinstance(layers, str) else parse_layers(",".join(map(str, layers)), n_layers)
    fingerprint = model_fingerprint(model)
    if corpus is None:
        corpus = wiki_corpus("train")
    elif not isinstance(corpus, Corpus):
        corpus = read_corpus(corpus)
    recipe = {"layers": layer_list, "tokens": tokens, "valid_tokens": valid_tokens, "block": block, "lr": lr,
              "init": init, "corpus": corpus.name, "seed": seed}
    if (out / CONFIG_FILE).is_file():
        done = read_lens_config(out)
        if done["model"]["fingerprint"] == fingerprint and done["asked"] == recipe:
            return done
        raise FileExistsError(f"{out} holds a tuned lens of another model or recipe; use another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; not writing a lens into it")

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    train_blocks, valid_blocks = _lens_blocks(tokenizer, corpus, block, tokens, valid_tokens)
    lens = TunedLens(layer_list, model.config.hidden_size).to(device)
    start = None
    if init == "lstsq":
        fit_translators(model, lens, train_blocks.to(device), progress=progress)
        start = copy.deepcopy(lens).requires_grad_(False)
    opt = torch.optim.Adam(lens.parameters(), lr=lr, amsgrad=True)
    steps = len(train_blocks)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * max(0.0, 1 - max(0, i - warmup) / max(1, steps - warmup)))
    order = torch.randperm(steps, generator=torch.Generator().manual_seed(seed))
    bar = tqdm(total=steps * block, desc=f"tuned lens, {len(layer_list)} layers", unit="tok", unit_scale=True,
               disable=not progress)
    for i in order.tolist():
        ids = train_blocks[i:i + 1].long().to(device)
        with torch.no_grad():
            outputs = model(input_ids=ids, output_hidden_states=True, use_cache=False)
            target = torch.log_softmax(outputs.logits.float(), dim=-1)
        total = 0.0
        for layer in layer_list:
            loss = _kl(target, lens.logits(model, outputs.hidden_states[layer], layer)).mean()
            loss.backward()  # layer by layer: one layer's [L, V] graph alive at a time
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        bar.update(ids.numel())
        bar.set_postfix(kl=f"{total / len(layer_list):.3f}")
    bar.close()
    train_seconds = time.perf_counter() - t0
    lens.eval()
    report = heldout_report(model, lens, valid_blocks.to(device), start=start)
    sizes = depth_sizes(model_dir, layer_list)
    config = {
        "format": LENS_FORMAT, "format_version": LENS_FORMAT_VERSION,
        "model": {"path": str(model_dir.resolve()), "fingerprint": fingerprint},
        "layers": layer_list,
        "sizes": {str(l): v["s"] for l, v in sizes.items()},
        "asked": recipe,
        "recipe": {**recipe, "train_tokens": train_blocks.numel(), "valid_tokens": valid_blocks.numel(),
                   "steps": steps, "optimizer": "Adam (amsgrad), linear warm-up 10% then linear decay, clip 1.0",
                   "start": {"lstsq": "fit_translators (ridge 1e-4) on the training blocks",
                             "identity": "A = 0, b = 0 (the logit lens)"}[init],
                   "loss": "KL(final || lens) at the same position, mean over tokens, per layer",
                   "threads": torch.get_num_threads()},
        "report": report,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_name(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save(lens.cpu(), tmp)
    write_csv(tmp / "report.csv", report)
    (tmp / "report.md").write_text(report_markdown(config))
    atomic_write(tmp / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    if out.is_dir():
        out.rmdir()  # empty, checked above
    install_folder(tmp, out, lambda folder: (folder / CONFIG_FILE).is_file())
    return config


# --------------------------------------------------------------------------------------------
# The depth family


class LensLayer(FamilyMember):
    """Layer `layer` of a model read through its tuned lens: a member that costs the first `layer` layers."""

    def __init__(self, model_dir: str | os.PathLike, lens_dir: str | os.PathLike, layer: int, size: dict,
                 name: str | None = None):
        self.model_dir, self.lens_dir, self.layer = Path(model_dir), Path(lens_dir), layer
        self.name = name or f"{self.model_dir.name}@layer{layer}"
        self._size = size

    def record(self) -> dict:
        weights = (self.lens_dir / WEIGHTS_FILE).read_bytes()
        return {"name": self.name, "s": self._size["s"], "non_embedding_params": self._size["non_embedding_params"],
                "path": str(self.model_dir.resolve()), "layer": self.layer, "lens": str(self.lens_dir.resolve()),
                "lens_sha256": hashlib.sha256(weights).hexdigest(),
                "size": "non-embedding parameters of the first `layer` layers and the final norm"}

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.model_dir))

    def load(self, device: torch.device, dtype: torch.dtype) -> EntropyFn:
        from transformers import AutoModelForCausalLM

        # The fingerprint is of the float32 weights, so check before casting to `dtype`.
        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32).eval()
        lens = load_lens(self.lens_dir, model, str(self.model_dir)).to(device=device, dtype=dtype)
        model = model.to(device=device, dtype=dtype)

        @torch.inference_mode()
        def entropies(ids: torch.Tensor) -> torch.Tensor:
            return logits_entropies(lens.logits(model, residual_after(model, ids, self.layer), self.layer))

        return entropies


def depth_family(model_dir: str | os.PathLike, lens_dir: str | os.PathLike | None = None) -> list[FamilyMember]:
    """The members of a model's depth family: every layer of its tuned lens, then the model itself."""
    model_dir = Path(model_dir)
    lens_dir = Path(lens_dir) if lens_dir is not None else default_lens_dir(model_dir)
    if not (lens_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no tuned lens for {model_dir} at {lens_dir}; train one with "
                                f"`real-vllm thf lens {model_dir} --out {lens_dir}`")
    config = read_lens_config(lens_dir)
    # The architecture now (cheap, from config.json); the weights when each member loads.
    from transformers import AutoConfig

    fields = {k: getattr(AutoConfig.from_pretrained(str(model_dir)), k, None) for k in FINGERPRINT_FIELDS}
    check_fingerprint(config, {**fields, "weights_sha256": config["model"]["fingerprint"]["weights_sha256"]},
                      lens_dir, str(model_dir))
    sizes = depth_sizes(model_dir, config["layers"])
    n = max(sizes)
    members: list[FamilyMember] = [LensLayer(model_dir, lens_dir, l, sizes[l]) for l in config["layers"]]
    members.append(HFCausalLM(model_dir, name=f"{model_dir.name}@layer{n}"))
    return members
