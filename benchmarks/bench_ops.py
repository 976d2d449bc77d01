"""The op table: our kernels against the reference and vLLM's nearest built-in path.

    python -m benchmarks.bench_ops            # full grid, batch {1,8,64,256} x vocab {32000,...,151936}
    python -m benchmarks.bench_ops --quick    # a smoke run (make bench-quick)
    python -m benchmarks.bench_ops --scenarios edt   # only these scenarios (comma-separated),
                                                     # written to ops_edt_<machine>.csv

Scenarios (in-place on float32 logits, as the sampler runs them):
  entropy  ops.entropy                 vs vLLM's Sampler.compute_logprobs (a log_softmax)
  edt      ops.apply_edt (fused)       vs vLLM's temperature step (Sampler.apply_temperature)
  top_p    ops.top_p_mask, per-row p   vs vLLM's top-k/top-p (apply_top_k_top_p: a sort on
                                          CPU, Triton on GPU) and FlashInfer where installed
  sled     ops.sled_evolve_from_hidden  vs the plain lm_head GEMM of the same early layers
           (L = 8 early layers, k = 10,   (torch.matmul [L*B, H] x [H, V]): SLED's arithmetic
           hidden 576, alpha 2)           floor, so the ratio is what the streaming reductions
                                          (stats, candidates, finish) add beyond the GEMM
Every run gets a fresh copy of the input (untimed). Times are medians; ratios are taken
against the vLLM path measured in the same run. On a GPU the floor (the bytes that must move
/ the measured copy bandwidth) and the effective bandwidth are reported too.

SLED's reference (pure torch, one row at a time over [L, k, V]) is timed only at batch <= 8;
on a CPU, batch 256 is left out of the SLED rows (minutes per shape on 2 cores: see the CSV's
note column).
"""

from __future__ import annotations

import argparse
import math

import torch
from tqdm import tqdm

import real_vllm.ops as ops
from benchmarks.common import RESULTS
from real_vllm.utils import machine_name, median_ms, write_csv
from real_vllm import reference

BATCHES = (1, 8, 64, 256)
VOCABS = (32000, 49152, 128256, 151936)
# How many times each scenario must read/write the logits at the least: entropy reads them
# once; the in-place transforms (SLED's too) read and write them once.
PASSES = {"entropy": 1, "edt": 2, "top_p": 2, "sled": 2}
# SLED's shape: early layers, hidden width (the default model's), candidates, evolution rate.
SLED_LAYERS, SLED_HIDDEN, SLED_K, SLED_ALPHA = 8, 576, 10, 2.0
SLED_REFERENCE_MAX_BATCH = 8  # the reference loops over rows, each [L, k, V]
SLED_CPU_MAX_BATCH = 64  # batch 256 takes minutes per vocabulary on 2 cores


def sled_gemm(x, a):
    """The plain lm_head GEMM of the early layers: [L*B, H] x [H, V]."""
    return torch.matmul(a["hidden"].reshape(-1, a["weight"].shape[1]), a["weight"].T)


def vllm_paths():
    """vLLM's own nearest path for each scenario (None when vLLM is not importable)."""
    try:
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
        from vllm.v1.sample.sampler import Sampler
    except ImportError:
        return {}
    return {
        "entropy": ("vllm log_softmax", lambda x, a: Sampler.compute_logprobs(x)),
        "edt": ("vllm temperature", lambda x, a: Sampler.apply_temperature(x, a["t0"], True)),
        "top_p": ("vllm top-p", lambda x, a: apply_top_k_top_p(x, None, a["top_p"])),
    }


# SLED's nearest vLLM path is the lm_head GEMM that vLLM would run for each early layer;
# it needs nothing from vLLM, so it is timed even where vLLM is not importable.
GEMM_PATHS = {"sled": ("vllm lm_head GEMM (L*B rows)", sled_gemm)}


def flashinfer_paths():
    try:
        from flashinfer.sampling import top_p_renorm_probs
    except ImportError:
        return {}
    return {"top_p": ("flashinfer top-p renorm", lambda x, a: top_p_renorm_probs(x.softmax(-1), a["top_p"]))}


def our_paths(backend: str):
    return {
        "entropy": (f"ours ({backend})", lambda x, a: ops.entropy(x, backend=backend)),
        "edt": (
            f"ours ({backend})",
            lambda x, a: ops.apply_edt(x, a["t0"], 0.8, a["theta"], inplace=True, backend=backend),
        ),
        "top_p": (f"ours ({backend})", lambda x, a: ops.top_p_mask(x, a["top_p"], inplace=True, backend=backend)),
        "sled": (
            f"ours ({backend})",
            lambda x, a: ops.sled_evolve_from_hidden(
                x, a["hidden"], a["weight"], SLED_ALPHA, SLED_K, inplace=True, backend=backend
            ),
        ),
    }


REFERENCE = {
    "entropy": ("reference", lambda x, a: reference.entropy(x)),
    "edt": ("reference", lambda x, a: reference.apply_edt(x, a["t0"], 0.8, a["theta"])),
    "top_p": ("reference", lambda x, a: reference.top_p_mask(x, a["top_p"])),
    # The reference backend of the same op: the full early logits, then reference.sled_evolve.
    "sled": (
        "reference",
        lambda x, a: ops.sled_evolve_from_hidden(
            x, a["hidden"], a["weight"], SLED_ALPHA, SLED_K, inplace=True, backend="reference"
        ),
    ),
}


def copy_bandwidth(device) -> float:
    """Bytes/ms of a large device copy (read + write): the floor's yardstick."""
    src = torch.empty(256 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), lambda: None, 10)
    return 2 * src.numel() * 4 / ms


def run(batches, vocabs, reps, device, scenarios=tuple(PASSES)) -> list[dict]:
    backends = [b for b in ops.available_backends(device) if b != "reference"]
    paths = {s: [] for s in PASSES}
    for table in [REFERENCE, vllm_paths(), GEMM_PATHS, flashinfer_paths(), *(our_paths(b) for b in backends)]:
        for scenario, path in table.items():
            paths[scenario].append(path)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    sled_batches = [b for b in batches if device.type == "cuda" or b <= SLED_CPU_MAX_BATCH]
    skipped = sorted(set(batches) - set(sled_batches))
    grid = [(s, b, v) for s in scenarios for b in (sled_batches if s == "sled" else batches) for v in vocabs]
    weight = None  # lm_head's weight [max vocab, H], made once; vocab V uses its first V rows
    for scenario, batch, vocab in tqdm(grid, desc="op table", unit="shape"):
        logits = (torch.randn(batch, vocab, generator=gen) * 2.0).to(device)
        args = {
            "t0": torch.full((batch,), 0.9, device=device),
            "theta": torch.full((batch,), 1.0, device=device),
            "top_p": torch.empty(batch).uniform_(0.7, 0.99, generator=gen).to(device),
        }
        note = ""
        if scenario == "sled":
            if weight is None:  # scaled so that the early logits spread a few nats
                weight = (torch.randn(max(vocabs), SLED_HIDDEN, generator=gen) * 0.05).to(device)
            args["weight"] = weight[:vocab]
            args["hidden"] = torch.randn(SLED_LAYERS, batch, SLED_HIDDEN, generator=gen).to(device)
            note = f"L={SLED_LAYERS} early layers, k={SLED_K}, hidden {SLED_HIDDEN}"
            if skipped:
                note += f"; batch {','.join(map(str, skipped))} not run (minutes per shape on this CPU)"
        work = torch.empty_like(logits)
        results = {}
        for name, fn in paths[scenario]:
            if scenario == "sled" and name == "reference" and batch > SLED_REFERENCE_MAX_BATCH:
                continue
            results[name] = median_ms(lambda: fn(work, args), lambda: work.copy_(logits), reps)
        vllm_ms = next((ms for name, ms in results.items() if name.startswith("vllm")), math.nan)
        moved = PASSES[scenario] * logits.numel() * 4
        if scenario == "sled":  # lm_head's weight is read once for all layers and rows
            moved += args["weight"].numel() * 4 + args["hidden"].numel() * 4
        for name, ms in results.items():
            rows.append({
                "scenario": scenario,
                "batch": batch,
                "vocab": vocab,
                "impl": name,
                "device": device.type,
                "median_ms": round(ms, 4),
                "ratio_vs_vllm": round(ms / vllm_ms, 4),
                "floor_ms": round(moved / bandwidth, 4) if bandwidth else "",
                "effective_GBps": round(moved / ms / 1e6, 2),
                "note": note,
            })
    return rows


def print_table(rows) -> None:
    print(f"{'scenario':<8} {'batch':>5} {'vocab':>7}  {'impl':<28} {'ms':>10} {'x vLLM':>8}")
    for r in rows:
        print(f"{r['scenario']:<8} {r['batch']:>5} {r['vocab']:>7}  {r['impl']:<28} {r['median_ms']:>10.3f} {r['ratio_vs_vllm']:>8.3f}")
    for note in dict.fromkeys(r["note"] for r in rows if r["note"]):
        print(f"sled: {note}")


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocab = max(r["vocab"] for r in rows)
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 4), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["scenario"] == scenario):
            pts = [(r["batch"], r["median_ms"]) for r in rows if r["scenario"] == scenario and r["impl"] == impl and r["vocab"] == vocab]
            ax.plot(*zip(*pts), marker="o", label=impl)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="median ms", title=f"{scenario}, vocab {vocab}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"real_vllm ops on {machine_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid, few repetitions (smoke run)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(PASSES), help=f"comma-separated subset of {','.join(PASSES)}")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/ops_<machine>.csv)")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(scenarios) - set(PASSES))
    if unknown:
        parser.error(f"unknown scenarios {unknown}: choose from {list(PASSES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches, vocabs, reps = ((1, 8), (32000,), 2) if args.quick else (BATCHES, VOCABS, args.reps)
    rows = run(batches, vocabs, reps, device, scenarios)
    stem = "ops" if set(scenarios) == set(PASSES) else "ops_" + "_".join(scenarios)  # a subset: its own file
    stem += "_quick" if args.quick else ""
    csv_path = args.out or RESULTS / f"{stem}_{machine_name()}.csv"
    write_csv(csv_path, rows)
    plot(rows, str(csv_path).replace(".csv", ".png"))
    print_table(rows)
    print(f"wrote {csv_path} and its .png")


if __name__ == "__main__":
    main()
