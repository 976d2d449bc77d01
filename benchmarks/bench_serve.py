"""The serving table: `vllm bench serve` (vLLM's own load client) against `real-vllm serve`.

    python -m benchmarks.bench_serve            # 64 random prompts, 64 in / 64 out, concurrency 32
    python -m benchmarks.bench_serve --quick    # a smoke run (make bench-quick)

One server on the default model (start-up costs ~40 s on a 2-core CPU), the same prompts and
concurrency for every sampler; the sampler is chosen per request with vllm_xargs, so every
run shares the engine and only the sampling differs. "plain" requests (sampler none) pass
through the plugin's processor untouched: it returns at once when no row uses a method.
Ratios are against plain sampling with top-p 0.95 (vLLM's own top-p) and without top-p.
REAL rows appear when a THF fits the model (the shipped one fits the default model).

SLED and DoLa need the early layers, which only a server started with --sampler sled computes
(its defaults: SLED reads every early layer 0..N-1, DoLa its "high" candidates); that server
taps them for every request, so "plain (sled server)" (sampler none there) shows what the
tapping costs a plain request. The sled server is started after the plain one is stopped;
its rows are still divided by the plain server's plain rows (x_plain, x_plain_top_p), and
x_server_plain divides by the plain row of the row's own server. --quick runs only the sled
row there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import RESULTS
from real_vllm.real_thf import real_available
from real_vllm.utils import machine_name, write_csv

# name -> (extra `vllm bench serve` options, vllm_xargs)
CONFIGS = {
    "plain": ([], {"sampler": "none"}),
    "plain top-p 0.95": (["--top-p", "0.95"], {"sampler": "none"}),
    "edt": ([], {"sampler": "edt"}),
}
# Served by a second server, started with SLED_SERVER_ARGS (the early layers are computed there).
SLED_SERVER_ARGS = ["--sampler", "sled"]
SLED_CONFIGS = {
    "plain (sled server)": ([], {"sampler": "none"}),
    "sled": ([], {"sampler": "sled"}),
    "dola": ([], {"sampler": "dola"}),
}
SLED_QUICK = ("sled",)
# Served only where a THF fits the model (the shipped one fits the default model).
REAL_CONFIGS = {
    "real": ([], {"sampler": "real"}),
    "real decay=inf (top-p 0.95)": ([], {"sampler": "real", "real_p0": 0.95, "real_decay_temperature": 1e30}),
}


METRICS = [
    ("output_tok_s", "output_throughput"),
    ("request_s", "request_throughput"),
    ("ttft_median_ms", "median_ttft_ms"),
    ("ttft_p99_ms", "p99_ttft_ms"),
    ("itl_median_ms", "median_itl_ms"),
    ("itl_p99_ms", "p99_itl_ms"),
]


def bench(server, model_dir: str, served: str, options: list[str], xargs: dict, load: dict, out: Path,
          warmups: int = 0) -> dict:
    """One `vllm bench serve` run; `warmups` requests (same sampler) go first, untimed."""
    cmd = [
        sys.executable, "-m", "real_vllm.cli", "vllm", "bench", "serve",
        "--backend", "openai", "--base-url", server.base_url.removesuffix("/v1"),
        "--model", served, "--tokenizer", model_dir,
        "--dataset-name", "random", "--random-input-len", str(load["input_len"]),
        "--random-output-len", str(load["output_len"]), "--num-prompts", str(load["num_prompts"]),
        "--max-concurrency", str(load["concurrency"]), "--ignore-eos", "--temperature", "1.0",
        "--seed", "0", "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
        "--extra-body", json.dumps({"vllm_xargs": xargs}), "--disable-tqdm",
        "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
        "--num-warmups", str(warmups), *options,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
            f"server log:\n{server.log_tail()}"
        )
    return json.loads(out.read_text())


def serve_rows(model_dir: str, server: str, server_args: list[str], configs: dict, load: dict, inspect=None) -> list[dict]:
    """Start one server (named ``server`` in the rows) with server_args, run every config
    against it with the same load, stop it; one row per config (METRICS, completed, failed).
    inspect(LocalServer), if given, is called before the server stops (e.g. to read its log)."""
    from real_vllm.server import LocalServer

    rows = []
    args = ["--served-model-name", "bench", "--max-num-seqs", str(max(32, load["concurrency"])), *server_args]
    with LocalServer(model_dir, args, progress=True) as live, tempfile.TemporaryDirectory() as tmp:
        for name, (options, xargs) in tqdm(configs.items(), desc=f"{server} server", unit="config"):
            # Warm-up first (a concurrency's worth): the first config on a fresh server otherwise
            # pays the engine's first-batch costs and every ratio against it is skewed.
            result = bench(live, model_dir, "bench", options, xargs, load, Path(tmp) / f"{len(rows)}.json",
                           warmups=load["concurrency"])
            row = {"sampler": name, "server": server, **{k: round(result[key], 3) for k, key in METRICS}}
            row["completed"] = result["completed"]
            row["failed"] = result.get("failed", load["num_prompts"] - result["completed"])
            rows.append(row)
        if inspect is not None:
            inspect(live)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--serve-args", default="", metavar="ARGS",
                        help="extra `real-vllm serve` options for both servers, e.g. "
                             "'--dtype bfloat16 --no-enforce-eager' (vLLM's own CPU defaults: the model's "
                             "dtype, torch.compile); the default is float32, eager")
    parser.add_argument("--tag", default="", help="name suffix of the CSV/PNG (e.g. bf16-compiled)")
    parser.add_argument("--no-sled-server", action="store_true", help="serve only the plain server's rows")
    args = parser.parse_args(argv)

    from real_vllm.assets import default_model_dir
    from real_vllm.server import CPU_SERVE_ARGS

    load = dict(num_prompts=args.num_prompts, concurrency=args.concurrency, input_len=args.input_len, output_len=args.output_len)
    if args.quick:
        load = dict(num_prompts=8, concurrency=4, input_len=16, output_len=8)
    model_dir = args.model or str(default_model_dir())
    configs = {**CONFIGS, **(REAL_CONFIGS if real_available(model_dir) else {})}
    sled_configs = {k: v for k, v in SLED_CONFIGS.items() if not args.quick or k in SLED_QUICK}
    serve_args = shlex.split(args.serve_args)
    rows = serve_rows(model_dir, "plain", serve_args, configs, load)
    if not args.no_sled_server:
        rows += serve_rows(model_dir, "sled", [*serve_args, *SLED_SERVER_ARGS], sled_configs, load)
    base = {r["sampler"]: r["output_tok_s"] for r in rows}
    server_plain = {"plain": base["plain"], "sled": base.get("plain (sled server)")}
    for r in rows:
        r["x_plain"] = round(r["output_tok_s"] / base["plain"], 3)
        r["x_plain_top_p"] = round(r["output_tok_s"] / base["plain top-p 0.95"], 3)
        own = server_plain[r["server"]]
        r["x_server_plain"] = round(r["output_tok_s"] / own, 3) if own else ""
        r.update({f"load_{k}": v for k, v in load.items()}, serve_args=" ".join([*CPU_SERVE_ARGS, *serve_args]),
                 machine=machine_name())
    stem = ("serve_quick" if args.quick else "serve") + (f"_{args.tag}" if args.tag else "")
    csv_path = RESULTS / f"{stem}_{machine_name()}.csv"
    write_csv(csv_path, rows)
    plot(rows, csv_path.with_suffix(".png"))
    print(f"{'sampler':<28} {'server':<6} {'out tok/s':>10} {'x plain':>8} {'x top-p':>8} {'x server':>8} "
          f"{'TTFT p50':>9} {'ITL p50':>8} {'failed':>6}")
    for r in rows:
        own = f"{r['x_server_plain']:>8.3f}" if r["x_server_plain"] != "" else f"{'':>8}"
        print(f"{r['sampler']:<28} {r['server']:<6} {r['output_tok_s']:>10.1f} {r['x_plain']:>8.3f} "
              f"{r['x_plain_top_p']:>8.3f} {own} {r['ttft_median_ms']:>9.1f} {r['itl_median_ms']:>8.1f} {r['failed']:>6}")
    print(f"wrote {csv_path} and its .png")


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(rows)))
    names = [r["sampler"] + (" [sled server]" if r["server"] == "sled" and "sled server" not in r["sampler"] else "") for r in rows]
    colors = ["tab:orange" if r["server"] == "sled" else "tab:blue" for r in rows]
    ax.barh(names, [r["output_tok_s"] for r in rows], color=colors)
    for i, r in enumerate(rows):
        ax.text(r["output_tok_s"], i, f" {r['x_plain_top_p']:.2f}x top-p", va="center", fontsize=8)
    ax.set(xlabel="output tokens/s", title=f"vllm bench serve, {machine_name()}")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
