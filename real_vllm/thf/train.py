"""Training THF on a data folder from `collect()`.

REAL sampling (arXiv 2406.07735, docs/algorithms.md §2.1). The loss is the paper's: one sqrt(MSE) over
the S + 1 predictions of every position (the curve at each of the S family sizes, and pred_last)
against the S entropies with the largest member's entropy appended as pred_last's target. The
paper's recipe: 3 epochs, 1,024-token blocks, AdamW, 100 warm-up steps then linear decay, head
initialised to zero. It fine-tuned a pretrained Pythia-70M (learning rate 5e-5); the backbone here
starts from random weights, so the default learning rate is higher (1e-3).

Resuming: after every epoch the model, optimizer, schedule and history go to
OUT/train_state.pt; rerunning the same call continues from the last finished epoch. A different
recipe for the same OUT is refused. At the end the checkpoint is written with THFModel.save (the
recipe, per-epoch history and final validation metrics in thf_config.json) and the train state is
removed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from real_vllm.thf import curves
from real_vllm.thf.dataset import TOKENIZER_DIR, load_split, read_meta
from real_vllm.thf.device import resolve_device
from real_vllm.thf.model import (
    CONFIG_FILE, DEFAULT_BACKBONE, DEFAULT_EMBEDDING_RANK, DEFAULT_WINDOW, THFConfig, THFModel, read_config,
)
from real_vllm.utils import atomic_write

STATE_FILE = "train_state.pt"


def thf_loss(outputs: torch.Tensor, entropies: torch.Tensor, sizes: torch.Tensor, curve: str) -> torch.Tensor:
    """The paper's loss: sqrt(mean squared error) over [curve at every size, pred_last].

    outputs [B, L, K] (THF outputs); entropies [B, L, S] (the family's, ascending size).
    """
    pred = curves.family_predictions(outputs, sizes, curve)
    target = torch.cat([entropies, entropies[..., -1:]], dim=-1)
    return torch.sqrt(torch.mean((pred - target) ** 2))


@torch.no_grad()
def validate(model: THFModel, tokens: torch.Tensor, entropies: torch.Tensor, sizes: torch.Tensor,
             batch_size: int, device: torch.device) -> dict:
    """Loss and RMSE per family size and for pred_last on held-out blocks (model in eval mode)."""
    was_training = model.training
    model.eval()
    sq = torch.zeros(len(sizes) + 1, dtype=torch.float64)
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size].to(device)
        ents = entropies[:, start:start + batch_size].permute(1, 2, 0).to(device)
        pred = curves.family_predictions(model(ids), sizes.to(device), model.config.curve)
        target = torch.cat([ents, ents[..., -1:]], dim=-1)
        sq += ((pred - target) ** 2).sum(dim=(0, 1)).double().cpu()
    model.train(was_training)
    n = tokens.numel()
    rmse = (sq / n).sqrt()
    return {"loss": round(math.sqrt(sq.sum().item() / (n * len(rmse))), 6),
            "rmse_per_size": [round(v, 6) for v in rmse[:-1].tolist()],
            "rmse_pred_last": round(rmse[-1].item(), 6)}


def train(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    curve: str = curves.DEFAULT_CURVE,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 8,
    weight_decay: float = 0.01,
    warmup_steps: int = 100,
    grad_clip: float = 1.0,
    backbone: dict | None = None,
    embedding_rank: int | None = DEFAULT_EMBEDDING_RANK,
    window: int = DEFAULT_WINDOW,
    attention: str = "block",
    seed: int = 0,
    device: str | torch.device | None = None,
    save_dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> dict:
    """Train a THF on `data_dir` and write the checkpoint folder `out_dir`; returns its training record.

    backbone: LlamaConfig overrides on DEFAULT_BACKBONE (vocab_size comes from the data's
    tokenizer, max_position_embeddings defaults to the block size). embedding_rank: None for a
    plain embedding. warmup_steps is capped at a tenth of all steps, so tiny runs still decay.
    attention: "block" (causal over the whole block; served on the last `window` tokens,
    recomputed every step) or "sliding" (every layer causal over the last `window` positions,
    a banded mask over the blocks; served incrementally with a per-request key/value cache,
    real_vllm/thf/incremental.py).
    """
    from tqdm.auto import tqdm

    curves.check_curve(curve)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
    data_dir, out = Path(data_dir), Path(out_dir)
    device = resolve_device(device)
    meta = read_meta(data_dir)
    tokens, entropies = load_split(data_dir, "train")
    val_tokens, val_entropies = load_split(data_dir, "valid")
    sizes = torch.tensor(meta["sizes"], dtype=torch.float32)

    arch = {**DEFAULT_BACKBONE, "max_position_embeddings": meta["block"], **(backbone or {}),
            "vocab_size": meta["tokenizer_vocab_size"]}
    steps_per_epoch = math.ceil(len(tokens) / batch_size)
    total_steps = steps_per_epoch * epochs
    recipe = {
        # The data by content (tokens and family sizes), not by path: a moved folder still resumes.
        "token_stream_sha256": meta["token_stream_sha256"], "sizes": meta["sizes"],
        "curve": curve, "epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
        "warmup_steps": min(warmup_steps, total_steps // 10), "grad_clip": grad_clip, "seed": seed,
        "backbone": arch, "embedding_rank": embedding_rank, "block": meta["block"],
        "train_tokens": tokens.numel(), "valid_tokens": val_tokens.numel(),
        "optimizer": "AdamW(betas=(0.9, 0.999)), linear warm-up then linear decay to 0",
        "loss": "sqrt(MSE) over the curve at every family size and pred_last (target: largest member)",
    }
    if attention != "block":  # recorded only when not the default, so block runs resume as before
        recipe["attention"], recipe["window"] = attention, window

    if (out / CONFIG_FILE).is_file():
        done = read_config(out).training
        if done.get("recipe") == recipe:
            return done
        raise FileExistsError(f"{out} already holds a THF trained with another recipe; use a new --out")

    torch.manual_seed(seed)
    config = THFConfig(
        sizes=meta["sizes"], members=[m["name"] for m in meta["members"]], curve=curve, window=window,
        backbone=arch, embedding_rank=embedding_rank, tokenizer=meta["tokenizer"], attention=attention)
    model = THFModel(config).to(device)
    decay, no_decay = [], []
    for p in model.parameters():
        # Norm gains and biases are not weight-decayed (standard practice for transformers).
        (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warm = recipe["warmup_steps"]

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / (total_steps - warm))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    history: list[dict] = []
    start_epoch = 0
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["recipe"] != recipe:
            raise FileExistsError(f"{state_path} is from a run with another recipe; use a new --out or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history, start_epoch = state["history"], state["epoch"]
        # Dropout draws from the global generator: restoring it makes a resumed run match an
        # uninterrupted one exactly.
        torch.set_rng_state(state["rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    out.mkdir(parents=True, exist_ok=True)

    sizes_dev = sizes.to(device)
    started = time.time()
    for epoch in range(start_epoch, epochs):
        model.train()
        # One permutation per epoch from (seed, epoch): a resumed run sees the same order.
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        bar = tqdm(range(steps_per_epoch), desc=f"THF epoch {epoch + 1}/{epochs}", disable=not progress)
        running, t0 = 0.0, time.time()
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            ids = tokens[idx].to(device)
            ents = entropies[:, idx].permute(1, 2, 0).to(device)
            loss = thf_loss(model(ids), ents, sizes_dev, curve)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            schedule.step()
            running += loss.item()
            bar.set_postfix(loss=f"{running / (step + 1):.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
        bar.close()
        metrics = validate(model, val_tokens, val_entropies, sizes, batch_size, device)
        history.append({"epoch": epoch + 1, "train_loss": round(running / steps_per_epoch, 6),
                        "valid": metrics, "seconds": round(time.time() - t0, 1),
                        "tokens_per_s": round(tokens.numel() / (time.time() - t0), 1)})
        if progress:
            # stderr, beside the progress bars: stdout stays free for the CLI's JSON result.
            print(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, valid {json.dumps(metrics)}",
                  file=sys.stderr)
        state = {"recipe": recipe, "epoch": epoch + 1, "history": history, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "rng": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    model.config.training = {"recipe": recipe, "data_dir": str(data_dir.resolve()), "history": history,
                             "final_valid": history[-1]["valid"],
                             "train_seconds_this_run": round(time.time() - started, 1),
                             "parameters": model.num_parameters(), "members": meta["members"]}
    model.save(out, tokenizer_dir=data_dir / TOKENIZER_DIR, dtype=save_dtype)
    state_path.unlink(missing_ok=True)
    return model.config.training
