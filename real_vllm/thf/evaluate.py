"""Held-out evaluation of a THF checkpoint against a data folder.

REAL sampling (arXiv 2406.07735, docs/algorithms.md §2.1-2.2): THF is useful when its curve
matches the family's entropies and when its residual entropy d = E(s_ref) - c varies from token
to token (a constant d would make REAL plain top-p). `evaluate()` reports:

- RMSE (nats) of the curve at every family size and of pred_last, with a baseline: the RMSE of
  predicting the split's mean entropy for that size (the labels' standard deviation);
- the same at the runtime condition, where THF sees only the last `window` (40) tokens, on a
  random sample of positions, next to the full-context RMSE at those positions (training uses
  whole 1,024-token blocks, so this shows what the short window costs); for a sliding THF the
  runtime input is its receptive field (THFConfig.context), on which it gives its full-context
  output, so the two agree;
- quantiles of the asymptotic entropy c, the residual d and the threshold
  p_t = min(1, p0 e^(-d/T)) at p0 = 1 for every T_decay of the paper's sweep
  {0.5, 0.7, 1, 2, 3, 4} (REAL's default decay is the REAL method config's, which this training
  tool does not import; the sweep shows where a decay leaves p_t);
- optionally a PNG: histograms of c, d and p_t, and predicted-vs-true density per family size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from real_vllm.thf import curves
from real_vllm.thf.dataset import load_split, read_meta
from real_vllm.thf.device import resolve_device
from real_vllm.thf.model import THFModel, predict_last

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# The paper's sweep of T_decay (docs/algorithms.md §2.2).
PAPER_DECAY_SWEEP = (0.5, 0.7, 1.0, 2.0, 3.0, 4.0)


def _summary(values: np.ndarray) -> dict:
    q = np.quantile(values, QUANTILES)
    return {"mean": round(float(values.mean()), 5),
            **{f"q{int(round(p * 100)):02d}": round(float(v), 5) for p, v in zip(QUANTILES, q)}}


def _rmse(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """RMSE per last-axis column of two [P, C] tensors."""
    return [round(v, 5) for v in ((pred.double() - target.double()) ** 2).mean(0).sqrt().tolist()]


@torch.no_grad()
def evaluate(
    ckpt: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    split: str = "valid",
    plot: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    window_positions: int = 512,
    p0: float = 1.0,
    decays: tuple[float, ...] = PAPER_DECAY_SWEEP,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Evaluate checkpoint `ckpt` on one split of `data_dir`; write the PNG `plot` when given.

    p0 and decays: the thresholds whose distributions are reported (p0 = 1: no ceiling below 1).
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    model = THFModel.load(ckpt, device=device)
    cfg = model.config
    meta = read_meta(data_dir)
    if meta["tokenizer_fingerprint"] != cfg.tokenizer.get("fingerprint"):
        raise ValueError(f"{data_dir} was tokenised with another tokenizer than the THF {ckpt}; "
                         f"their token ids are not comparable")
    tokens, entropies = load_split(data_dir, split)
    sizes = torch.tensor(meta["sizes"], dtype=torch.float32, device=device)
    n_blocks, block = tokens.shape
    # [N, L, S] labels with the largest member's entropy appended as pred_last's target.
    labels = torch.cat([entropies, entropies[-1:]]).permute(1, 2, 0)

    preds, c_all, d_all = [], [], []
    for start in tqdm(range(0, n_blocks, batch_size), desc="THF eval", disable=not progress):
        out = model(tokens[start:start + batch_size].to(device))
        preds.append(curves.family_predictions(out, sizes, cfg.curve).cpu())
        c_all.append(curves.asymptote(out, cfg.curve).cpu())
        d_all.append(curves.residual_entropy(out, cfg.s_ref, cfg.curve).cpu())
    pred = torch.cat(preds).reshape(-1, len(sizes) + 1)
    flat_labels = labels.reshape(-1, len(sizes) + 1)
    c = torch.cat(c_all).reshape(-1).numpy()
    d = torch.cat(d_all).reshape(-1).numpy()
    p = {decay: curves.threshold(torch.from_numpy(d), p0, decay).numpy() for decay in decays}

    rmse = _rmse(pred, flat_labels)
    baseline = [round(v, 5) for v in flat_labels.double().std(0, unbiased=False).tolist()]
    members = [{"name": m["name"], "s": round(m["s"], 5), "rmse": rmse[j], "baseline_rmse": baseline[j],
                "mean_entropy": round(flat_labels[:, j].mean().item(), 5)}
               for j, m in enumerate(meta["members"])]

    # Runtime condition: the window ending at a random position t (t >= window - 1 so it is full).
    window = min(cfg.context, block)
    g = torch.Generator().manual_seed(seed)
    count = min(window_positions, n_blocks * (block - window + 1))
    rows = torch.randint(0, n_blocks, (count,), generator=g)
    ends = torch.randint(window - 1, block, (count,), generator=g)
    windows = tokens.unfold(1, window, 1)[rows, ends - window + 1]  # [P, window]
    win_pred = torch.cat([
        curves.family_predictions(predict_last(model, windows[i:i + 256].to(device)), sizes, cfg.curve).cpu()
        for i in range(0, count, 256)])
    win_labels = labels[rows, ends]
    full_pred = pred.reshape(n_blocks, block, -1)[rows, ends]
    win_rmse, full_rmse = _rmse(win_pred, win_labels), _rmse(full_pred, win_labels)

    result = {
        "checkpoint": str(ckpt), "data_dir": str(data_dir), "split": split, "tokens": tokens.numel(),
        "curve": cfg.curve, "s_ref": cfg.s_ref,
        "loss": round(float(((pred.double() - flat_labels.double()) ** 2).mean().sqrt()), 5),
        "members": members,
        "pred_last": {"rmse": rmse[-1], "baseline_rmse": baseline[-1]},
        "window": {"window": window, "positions": count, "rmse_per_size": win_rmse[:-1],
                   "rmse_pred_last": win_rmse[-1], "full_context_rmse_per_size": full_rmse[:-1],
                   "full_context_rmse_pred_last": full_rmse[-1]},
        "asymptote_c": _summary(c),
        "residual_d": _summary(d),
        "threshold": {"p0": p0, "by_decay": [{"decay": decay, **_summary(p[decay])} for decay in decays]},
        "plot": None,
    }
    if plot is not None:
        result["plot"] = str(_plot(Path(plot), c, d, p, pred, flat_labels, members, p0, seed))
    return result


def _plot(path: Path, c, d, p, pred, labels, members, p0, seed) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(members)
    cols = max(3, n)
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.4), squeeze=False)
    for ax, values, title in ((axes[0, 0], c, "asymptotic entropy c (nats)"),
                              (axes[0, 1], d, "residual entropy d = E(s_ref) - c")):
        ax.hist(values, bins=60, color="tab:blue")
        ax.set_title(title, fontsize=9)
    for decay, values in p.items():
        axes[0, 2].hist(values, bins=60, range=(0, 1), histtype="step", label=f"T={decay:g}")
    axes[0, 2].set_title(f"threshold p_t (p0={p0:g}) by T_decay", fontsize=9)
    axes[0, 2].legend(fontsize=7)
    for ax in axes[0, 3:]:
        ax.axis("off")
    # Predicted vs true per size, on a sample so the density plot stays quick on big splits.
    keep = torch.randperm(len(pred), generator=torch.Generator().manual_seed(seed))[:50_000]
    hi = float(labels.max())
    for j, m in enumerate(members):
        ax = axes[1, j]
        ax.hist2d(labels[keep, j].numpy(), pred[keep, j].numpy(), bins=60, range=[[0, hi], [0, hi]], cmin=1)
        ax.plot([0, hi], [0, hi], color="red", linewidth=0.8)
        ax.set_title(f"{m['name']} (s={m['s']:.2f})\nRMSE {m['rmse']:.3f} (mean-baseline {m['baseline_rmse']:.3f})",
                     fontsize=8)
        ax.set_xlabel("true entropy", fontsize=8)
        ax.set_ylabel("THF curve E(s)", fontsize=8)
    for ax in axes[1, n:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
