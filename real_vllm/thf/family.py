"""A home-made model family for THF: small Llama models with the SmolLM2 tokenizer.

REAL's THF (docs/algorithms.md §2.1) learns, per token, how a family's next-token entropy falls with
model size s = ln(non-embedding parameters). No family of small models shares SmolLM2's tokenizer
offline, so this module trains one here: LlamaForCausalLM members (vocabulary 49,152, tied
input/output embeddings) trained from scratch with the plain next-token (LM) loss on the training
part of the offline wiki summaries (corpus.wiki_corpus("train")), every member on the same token
stream for the same number of tokens. The embedded SmolLM2-135M-Instruct is the family's largest
member (`default` in `thf collect`).

Why plain LM loss and not distillation from SmolLM2-135M: on this CPU the teacher's forward pass
runs at about 300-650 tokens/s while the members train at roughly 1,000-2,000 tokens/s, so
on-the-fly teacher logits would cut the tokens seen per CPU-second by 2-4x; caching them is not
practical either (49,152 floats per token: ~200 kB/token, ~60 GB for 300k tokens; a top-k cache
would need its own tooling). For models this undertrained, more tokens beat a softer target.

Members grow in width at a fixed depth of 4 layers, with Adam's LR scaled by 96 / hidden_size
(muP-style). Measured here (RECIPE.md of the shipped checkpoint): at 300k tokens per member the
held-out mean entropies are nearly equal (xs 6.460, s 6.437, m 6.476 nats; SmolLM2 2.400), i.e.
such short training does NOT yet give entropies that fall with size; train_family reports it
("entropy_decreases_with_size" in family.json) and main() exits non-zero when it fails.

    python -m real_vllm.thf.family --out ~/.cache/real_vllm/thf-family     # xs, s, m; 300k tokens each

Each finished member is a Hugging Face folder (save_pretrained + tokenizer) that `thf collect`
accepts; a finished member is skipped on rerun, an unfinished one resumes from its last saved
training state. `family.json` in out_dir records sizes, timings and held-out mean entropies.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from real_vllm.utils import atomic_write, match_plain_mode

# Presets: name -> LlamaConfig fields. Non-embedding parameter counts (vocabulary 49,152, tied):
#   xs ~0.44M (s = 13.00), s ~1.77M (s = 14.39), m ~4.96M (s = 15.42), l ~17M (s = 16.6)
PRESETS: dict[str, dict] = {
    "xs": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=3,
               intermediate_size=256),
    "s": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=3,
              intermediate_size=512),
    "m": dict(hidden_size=320, num_hidden_layers=4, num_attention_heads=5, num_key_value_heads=5,
              intermediate_size=864),
    # Deeper and narrower (8 layers): at 300k tokens "s8" (2.1M) trained WORSE than "xs" (0.44M),
    # so the default family grows in width at a fixed depth of 4 layers.
    "s8": dict(hidden_size=128, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=512),
    "m8": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=768),
    "l": dict(hidden_size=384, num_hidden_layers=10, num_attention_heads=6, num_key_value_heads=6,
              intermediate_size=1024),
}
DEFAULT_SIZES = ("xs", "s", "m")
MARKER = "family_member.json"
STATE = "training_state.pt"


def _tokenizer():
    from transformers import AutoTokenizer

    from real_vllm.assets import default_model_dir

    return AutoTokenizer.from_pretrained(str(default_model_dir()))


def _stream(tokenizer, split: str, cache: Path | None) -> torch.Tensor:
    """The wiki `split` documents tokenised and joined with EOS (int32), cached in `cache`."""
    from real_vllm.thf.corpus import wiki_corpus

    if cache is not None and cache.is_file():
        return torch.load(cache)
    docs = wiki_corpus(split).documents
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        for row in tokenizer(docs[start:start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(row + eos)
    stream = torch.tensor(ids, dtype=torch.int32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: torch.save(stream, tmp))
    return stream


def _write_json(path: Path, doc: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n"))


def preset_fields(preset: str | dict) -> dict:
    """LlamaConfig fields of a PRESETS name, or the fields themselves."""
    return PRESETS[preset] if isinstance(preset, str) else preset


def member_config(preset: str, tokenizer, context: int):
    from transformers import LlamaConfig

    fields = preset_fields(preset)
    return LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=context, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       rms_norm_eps=1e-5, rope_theta=10000.0, **fields)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def train_member(out: Path, preset: str, stream: torch.Tensor, tokenizer, *, tokens: int, context: int = 1024,
                 batch_blocks: int = 2, lr: float = 3e-3, warmup: int = 10, seed: int = 0,
                 save_every: int = 50, lr_width_ref: int | None = 96, progress: bool = True) -> dict:
    """Train one member into `out` (resumable); returns its record (also written to out/MARKER)."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from real_vllm.thf.collect import parameter_counts

    if (out / MARKER).is_file():
        done = json.loads((out / MARKER).read_text())
        width = preset_fields(preset)["hidden_size"]
        asked = {"config": preset_fields(preset), "tokens": max(1, tokens // (batch_blocks * context)) * batch_blocks * context, "context": context,
                 "batch_blocks": batch_blocks, "lr": round(lr * lr_width_ref / width, 12) if lr_width_ref else lr, "seed": seed}
        if any(done.get(k) != v for k, v in asked.items()):
            raise FileExistsError(f"{out} holds a member trained with another recipe "
                                  f"({ {k: done.get(k) for k in asked} }, asked {asked}); use another --out")
        return done
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = member_config(preset, tokenizer, context)
    if lr_width_ref:
        # muP-style: Adam's step size scaled by 1/width, so wider members are not over-stepped.
        lr = round(lr * lr_width_ref / config.hidden_size, 12)
    model = LlamaForCausalLM(config)
    counts = parameter_counts(model)
    step_tokens = batch_blocks * context
    total = max(1, tokens // step_tokens)
    n_blocks = len(stream) // context
    if total * batch_blocks > n_blocks:
        print(f"[family] {preset}: {total * batch_blocks} blocks asked for, the stream has {n_blocks}; "
              f"repeating it", file=sys.stderr)
    blocks = stream[:n_blocks * context].view(n_blocks, context).long()
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n_blocks, generator=g)
                       for _ in range(math.ceil(total * batch_blocks / n_blocks))])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    step, elapsed, losses = 0, 0.0, []
    if (out / STATE).is_file():
        state = torch.load(out / STATE, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, losses = state["step"], state["elapsed"], state["losses"]
    model.train()
    bar = tqdm(total=total * step_tokens, initial=step * step_tokens, unit="tok", unit_scale=True,
               desc=f"train {preset} (non-emb {counts['non_embedding_params'] / 1e6:.2f}M)", disable=not progress)
    t0 = time.perf_counter()
    while step < total:
        for group in opt.param_groups:
            group["lr"] = _lr(step, total, lr, warmup)
        ids = blocks[order[step * batch_blocks:(step + 1) * batch_blocks]]
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        step += 1
        bar.update(step_tokens)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % save_every == 0 and step < total:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                     "elapsed": elapsed + time.perf_counter() - t0, "losses": losses}
            atomic_write(out / STATE, lambda tmp: torch.save(state, tmp))
    bar.close()
    elapsed += time.perf_counter() - t0
    model.eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    match_plain_mode(out)  # safetensors writes 0600 files
    record = {"preset": preset, "config": preset_fields(preset), **counts, "tokens": total * step_tokens,
              "steps": total, "context": context, "batch_blocks": batch_blocks, "lr": lr, "seed": seed,
              "loss": "plain next-token cross-entropy (no distillation)",
              "train_seconds": round(elapsed, 1), "train_tokens_per_s": round(total * step_tokens / elapsed, 1),
              "final_loss_mean_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4)}
    _write_json(out / MARKER, record)  # last: a folder with its marker is a finished member
    (out / STATE).unlink(missing_ok=True)
    return record


@torch.inference_mode()
def heldout_entropy(model_dir: str | os.PathLike, stream: torch.Tensor, *, tokens: int = 8192,
                    block: int = 1024, batch: int = 2) -> dict:
    """Mean next-token entropy and cross-entropy (nats) of a model on the first `tokens` held-out tokens."""
    from transformers import AutoModelForCausalLM

    from real_vllm.thf.collect import token_entropies

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    n = min(tokens, len(stream)) // block
    ids = stream[:n * block].view(n, block).long()
    ents, nll, t0 = [], [], time.perf_counter()
    for i in range(0, n, batch):
        x = ids[i:i + batch]
        ents.append(token_entropies(model, x))
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        nll.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                     reduction="none"))
    return {"mean_entropy": round(torch.cat(ents).mean().item(), 4),
            "mean_cross_entropy": round(torch.cat(nll).mean().item(), 4),
            "tokens": n * block, "seconds": round(time.perf_counter() - t0, 1)}


def train_family(out_dir: str | os.PathLike, sizes=DEFAULT_SIZES, tokens_per_member: int = 300_000, *,
                 context: int = 1024, batch_blocks: int = 1, lr: float = 3e-3, lr_width_ref: int | None = 96, seed: int = 0,
                 eval_tokens: int = 8192, eval_default: bool = True, progress: bool = True) -> dict:
    """Train every member of `sizes` (PRESETS names) into out_dir/<name>; check held-out entropies.

    Returns (and writes to out_dir/family.json) per-member records with held-out mean entropies
    on the wiki "heldout" split, plus the embedded SmolLM2's when eval_default.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = _tokenizer()
    train_stream = _stream(tokenizer, "train", out / "wiki-train-tokens.pt")
    heldout_stream = _stream(tokenizer, "heldout", out / "wiki-heldout-tokens.pt")
    members = {}
    for name in sizes:
        rec = train_member(out / name, name, train_stream, tokenizer, tokens=tokens_per_member, context=context,
                           batch_blocks=batch_blocks, lr=lr, seed=seed, lr_width_ref=lr_width_ref,
                           progress=progress)
        if "heldout" not in rec:
            rec["heldout"] = heldout_entropy(out / name, heldout_stream, tokens=eval_tokens, block=context)
            _write_json(out / name / MARKER, rec)
        members[name] = rec
        print(f"[family] {name}: non-emb {rec['non_embedding_params']:,} (s={rec['s']:.3f}), "
              f"{rec['train_tokens_per_s']} tok/s, held-out mean entropy {rec['heldout']['mean_entropy']} nats, "
              f"cross-entropy {rec['heldout']['mean_cross_entropy']}", file=sys.stderr)
    summary = {"members": members, "train_stream_tokens": len(train_stream),
               "heldout_stream_tokens": len(heldout_stream)}
    previous = json.loads((out / "family.json").read_text()) if (out / "family.json").is_file() else {}
    if eval_default:
        if "default" in previous and previous["default"].get("tokens") == min(eval_tokens, len(heldout_stream)) // context * context:
            summary["default"] = previous["default"]
        else:
            from real_vllm.assets import default_model_dir
            from real_vllm.thf.collect import sizes_from_config

            summary["default"] = {**heldout_entropy(default_model_dir(), heldout_stream, tokens=eval_tokens,
                                                    block=context),
                                  **sizes_from_config(default_model_dir())}
        print(f"[family] default (SmolLM2-135M-Instruct): held-out mean entropy "
              f"{summary['default']['mean_entropy']}, cross-entropy {summary['default']['mean_cross_entropy']}",
              file=sys.stderr)
    ents = [members[n]["heldout"]["mean_entropy"] for n in sorted(members, key=lambda n: members[n]["s"])]
    summary["entropy_decreases_with_size"] = all(a > b for a, b in zip(ents, ents[1:]))
    _write_json(out / "family.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m real_vllm.thf.family", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the members (one subfolder each) and family.json")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), choices=sorted(PRESETS))
    p.add_argument("--tokens-per-member", type=int, default=300_000)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--batch-blocks", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR at width --lr-width-ref (default 3e-3)")
    p.add_argument("--lr-width-ref", type=int, default=96,
                   help="scale each member's LR by REF/hidden_size (muP-style); 0 = the same LR for all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--no-eval-default", action="store_true")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    summary = train_family(a.out, a.sizes, a.tokens_per_member, context=a.context, batch_blocks=a.batch_blocks,
                           lr=a.lr, lr_width_ref=a.lr_width_ref or None, seed=a.seed, eval_tokens=a.eval_tokens, eval_default=not a.no_eval_default)
    print(json.dumps(summary, indent=2))
    if not summary["entropy_decreases_with_size"]:
        raise SystemExit("[family] held-out mean entropy does not decrease with size")


if __name__ == "__main__":
    main()
