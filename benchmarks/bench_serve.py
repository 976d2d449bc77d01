"""The serving table: `vllm bench serve` (vLLM's own load client) against `real-vllm serve`.

    python -m benchmarks.bench_serve            # 64 random prompts, 64 in / 64 out, concurrency 32
    python -m benchmarks.bench_serve --quick    # a smoke run (make bench-quick)
    python -m benchmarks.bench_serve --concurrency 8,32,64,128 --waves 2 --step-timing --no-sled-server
        # every sampler at each concurrency (2 x concurrency prompts each), on one server, with
        # each engine step's time split into vLLM's forward, vLLM's sampler and the plugin

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
row there. With several concurrencies every ratio is within its concurrency.

--step-timing starts the servers with REAL_VLLM_STEP_TIMING=1 (real_vllm.integration.step_timing)
and reads real_vllm:step_seconds from /metrics when the warm-up has ended and again after the
run: the per-step milliseconds of the timed run (prefill steps included) are the columns
step_ms = forward_ms + prep_logits_ms + sampler_ms + plugin_ms + other_ms, and rows_per_step
(vLLM's generation tokens per step). Each row also has the load average (1 min) before and
after its run and the server's start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
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


# The environment variables that change what a server measures; recorded in the CSV.
RECORDED_ENV = ("VLLM_USE_AOT_COMPILE", "REAL_VLLM_STEP_TIMING")
FLUSH_WAIT_S = 1.5  # > the workers' metric-file interval (observability.FLUSH_SECONDS)


def bench(server, model_dir: str, served: str, options: list[str], xargs: dict, load: dict, out: Path,
          warmups: int = 0, on_warm=None) -> dict:
    """One `vllm bench serve` run; `warmups` requests (same sampler) go first, untimed;
    on_warm() is called when they are done (the timed run starts then)."""
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
    if on_warm is not None and warmups == 0:
        on_warm()
    lines = []
    with tempfile.TemporaryFile("w+") as err:
        # unbuffered: its "Warmup run completed." line arrives when it is printed
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            lines.append(line)
            if on_warm is not None and line.startswith("Warmup run completed"):
                on_warm()
        proc.wait()
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve failed:\n{''.join(lines)[-3000:]}\n{stderr[-3000:]}\n"
            f"server log:\n{server.log_tail()}"
        )
    return json.loads(out.read_text())


def scrape_steps(server) -> dict[str, float]:
    """real_vllm:step_seconds' sum and count per part, and vLLM's generation tokens, summed over
    the server's engines: {"<part>_sum": s, "<part>_count": n, "generation_tokens": n}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics", timeout=30) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("real_vllm:step_seconds_sum", "real_vllm:step_seconds_count"):
                key = f"{sample.labels['part']}_{sample.name.rsplit('_', 1)[1]}"
            elif sample.name == "vllm:generation_tokens_total":
                key = "generation_tokens"
            else:
                continue
            found[key] = found.get(key, 0.0) + sample.value
    return found


def step_split(before: dict, after: dict) -> dict:
    """The per-step milliseconds of the run between two scrape_steps() (step_timing's parts)."""
    def total(part):
        return after.get(f"{part}_sum", 0.0) - before.get(f"{part}_sum", 0.0)

    steps = after.get("vllm_sample_count", 0.0) - before.get("vllm_sample_count", 0.0)
    if steps <= 0:
        raise RuntimeError("no step of vLLM's runner was timed: is REAL_VLLM_STEP_TIMING=1 reaching the "
                           "server, and is it vLLM's V1 runner?")
    plugin = total("processors_apply") + total("processors_update")
    parts = {
        "forward_ms": total("vllm_model_forward"),
        "prep_logits_ms": total("vllm_execute_model") - total("vllm_model_forward") - total("processors_update"),
        "sampler_ms": total("vllm_sample") - total("processors_apply"),
        "plugin_ms": plugin,
        "other_ms": total("vllm_sample_tokens") - total("vllm_sample"),
    }
    split = {"steps": int(steps), "rows_per_step": round((after.get("generation_tokens", 0.0)
                                                           - before.get("generation_tokens", 0.0)) / steps, 2),
             "step_ms": round(1e3 * sum(parts.values()) / steps, 3)}
    split.update({k: round(1e3 * v / steps, 3) for k, v in parts.items()})
    split["plugin_share"] = round(plugin / sum(parts.values()), 4)
    return split


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def serve_rows(model_dir: str, server: str, server_args: list[str], configs: dict, loads: list[dict],
               inspect=None, step_timing: bool = False, warmups: int | None = None,
               on_row=None) -> list[dict]:
    """Start one server (named ``server`` in the rows) with server_args, run every config
    against it at each load (in order), stop it; one row per load and config (METRICS,
    completed, failed, the load average around the run, the server's start-up seconds; with
    step_timing the step split). warmups: untimed requests before each run (default: its
    concurrency). on_row(rows), if given, is called after each run (to keep what a crash would
    lose). inspect(LocalServer), if given, is called before the server
    stops (e.g. to read its log)."""
    from real_vllm.server import LocalServer

    rows = []
    max_seqs = max(32, *(load["concurrency"] for load in loads))
    args = ["--served-model-name", "bench", "--max-num-seqs", str(max_seqs), *server_args]
    env = {"REAL_VLLM_STEP_TIMING": "1"} if step_timing else {}
    start_load = load_average()
    started = time.monotonic()
    with LocalServer(model_dir, args, env=env, progress=True) as live, tempfile.TemporaryDirectory() as tmp:
        start_s = round(time.monotonic() - started, 1)
        runs = [(load, name, config) for load in loads for name, config in configs.items()]
        for load, name, (options, xargs) in tqdm(runs, desc=f"{server} server", unit="run"):
            before = {}
            load_before = load_average()
            # Warm-up first (a concurrency's worth): the first config on a fresh server otherwise
            # pays the engine's first-batch costs and every ratio against it is skewed.
            result = bench(live, model_dir, "bench", options, xargs, load, Path(tmp) / f"{len(rows)}.json",
                           warmups=load["concurrency"] if warmups is None else warmups,
                           on_warm=(lambda: before.update(scrape_steps(live))) if step_timing else None)
            row = {"sampler": name, "server": server, "concurrency": load["concurrency"],
                   **{k: round(result[key], 3) for k, key in METRICS}}
            row["completed"] = result["completed"]
            row["failed"] = result.get("failed", load["num_prompts"] - result["completed"])
            if step_timing:
                time.sleep(FLUSH_WAIT_S)  # the last steps' metric files
                row.update(step_split(before, scrape_steps(live)))
            row.update(loadavg_before=load_before, loadavg_after=load_average(), server_start_s=start_s,
                       server_start_loadavg=start_load, load=load)
            row["load_warmups"] = load["concurrency"] if warmups is None else warmups
            rows.append(row)
            if on_row is not None:
                on_row(rows)
        if inspect is not None:
            inspect(live)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", default="32", metavar="N[,N...]",
                        help="the client's concurrency; several (8,32,64,128): every config at each, one server")
    parser.add_argument("--waves", type=int, metavar="K",
                        help="send K x concurrency prompts at each concurrency (instead of --num-prompts)")
    parser.add_argument("--warmups", type=int, metavar="N",
                        help="untimed requests before each run (default: the concurrency)")
    parser.add_argument("--step-timing", action="store_true",
                        help="split each step's time into vLLM's forward, vLLM's sampler and the plugin "
                             "(servers run with REAL_VLLM_STEP_TIMING=1)")
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

    try:
        concurrencies = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency: a number or a comma-separated list, not {args.concurrency!r}")
    if any(c < 1 for c in concurrencies) or (args.waves is not None and args.waves < 1):
        parser.error("--concurrency and --waves must be at least 1")
    loads = [dict(num_prompts=args.waves * c if args.waves else args.num_prompts, concurrency=c,
                  input_len=args.input_len, output_len=args.output_len) for c in concurrencies]
    if args.quick:
        loads = [dict(num_prompts=8, concurrency=4, input_len=16, output_len=8)]
    model_dir = args.model or str(default_model_dir())
    configs = {**CONFIGS, **(REAL_CONFIGS if real_available(model_dir) else {})}
    sled_configs = {k: v for k, v in SLED_CONFIGS.items() if not args.quick or k in SLED_QUICK}
    serve_args = shlex.split(args.serve_args)
    if args.warmups is not None and args.warmups < 0:
        parser.error("--warmups must be at least 0")
    env = " ".join(f"{k}={os.environ[k]}" for k in RECORDED_ENV if k in os.environ)
    env = " ".join(filter(None, [env, "REAL_VLLM_STEP_TIMING=1" if args.step_timing else ""]))
    stem = ("serve_quick" if args.quick else "serve") + (f"_{args.tag}" if args.tag else "")
    csv_path = RESULTS / f"{stem}_{machine_name()}.csv"
    done: list[dict] = []

    def table(rows) -> list[dict]:
        """The CSV's rows: every row with its ratios within its concurrency (blank where that
        concurrency's plain rows are missing) and the run's settings."""
        out = []
        for r in rows:
            r = dict(r)
            base = {q["sampler"]: q["output_tok_s"] for q in rows if q["concurrency"] == r["concurrency"]}
            own = base.get("plain") if r["server"] == "plain" else base.get("plain (sled server)")
            for key, divisor in (("x_plain", base.get("plain")), ("x_plain_top_p", base.get("plain top-p 0.95")),
                                 ("x_server_plain", own)):
                r[key] = round(r["output_tok_s"] / divisor, 3) if divisor else ""
            r.update({f"load_{k}": v for k, v in r.pop("load").items() if k != "concurrency"},
                     serve_args=" ".join([*CPU_SERVE_ARGS, *serve_args]), env=env, machine=machine_name())
            out.append(r)
        return out

    def keep(rows) -> None:  # after each run: what is measured so far
        write_csv(csv_path, table([*done, *rows]))

    done += serve_rows(model_dir, "plain", serve_args, configs, loads, step_timing=args.step_timing,
                       warmups=args.warmups, on_row=keep)
    if not args.no_sled_server:
        done += serve_rows(model_dir, "sled", [*serve_args, *SLED_SERVER_ARGS], sled_configs, loads,
                           step_timing=args.step_timing, warmups=args.warmups, on_row=keep)
    rows = table(done)
    write_csv(csv_path, rows)
    if len(loads) > 1:
        plot_concurrency(rows, csv_path.with_suffix(".png"))
    else:
        plot(rows, csv_path.with_suffix(".png"))
    split = args.step_timing
    print(f"{'conc':>4} {'sampler':<28} {'server':<6} {'out tok/s':>10} {'x plain':>8} {'x top-p':>8} {'x server':>8} "
          f"{'TTFT p50':>9} {'ITL p50':>8} {'failed':>6}"
          + (f" {'step ms':>8} {'forward':>8} {'prep+lm':>8} {'sampler':>8} {'plugin':>8} {'other':>8} {'rows':>6}"
             if split else ""))
    for r in rows:
        own = f"{r['x_server_plain']:>8.3f}" if r["x_server_plain"] != "" else f"{'':>8}"
        print(f"{r['concurrency']:>4} {r['sampler']:<28} {r['server']:<6} {r['output_tok_s']:>10.1f} {r['x_plain']:>8.3f} "
              f"{r['x_plain_top_p']:>8.3f} {own} {r['ttft_median_ms']:>9.1f} {r['itl_median_ms']:>8.1f} {r['failed']:>6}"
              + (f" {r['step_ms']:>8.2f} {r['forward_ms']:>8.2f} {r['prep_logits_ms']:>8.2f} {r['sampler_ms']:>8.2f} "
                 f"{r['plugin_ms']:>8.2f} {r['other_ms']:>8.2f} {r['rows_per_step']:>6.1f}" if split else ""))
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


def plot_concurrency(rows, path) -> None:
    """Left: output tok/s against concurrency per sampler; right (with the step split): each
    sampler's per-step milliseconds by part at each concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "step_ms" in rows[0]
    fig, axes = plt.subplots(1, 2 if split else 1, figsize=(13 if split else 6.5, 4.8), squeeze=False)
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    concurrencies = sorted({r["concurrency"] for r in rows})
    ax = axes[0][0]
    for name in samplers:
        points = sorted((r["concurrency"], r["output_tok_s"]) for r in rows if r["sampler"] == name)
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set(xlabel="client concurrency", ylabel="output tokens/s", title=f"vllm bench serve, {machine_name()}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if split:
        ax = axes[0][1]
        parts = [("forward_ms", "model forward"), ("prep_logits_ms", "input prep + lm_head"),
                 ("sampler_ms", "vLLM sampler"), ("plugin_ms", "real_vllm processors"), ("other_ms", "bookkeeping")]
        width = 0.8 / len(samplers)
        for i, name in enumerate(samplers):
            for j, c in enumerate(concurrencies):
                r = next((r for r in rows if r["sampler"] == name and r["concurrency"] == c), None)
                if r is None:
                    continue
                bottom = 0.0
                for k, (key, label) in enumerate(parts):
                    ax.bar(j + (i - (len(samplers) - 1) / 2) * width, r[key], width * 0.95, bottom=bottom,
                           color=f"C{k}", label=label if i == 0 and j == 0 else None)
                    bottom += r[key]
        ax.set_xticks(range(len(concurrencies)), [str(c) for c in concurrencies])
        ax.set(xlabel=f"client concurrency (bars: {', '.join(samplers)})", ylabel="ms per engine step (mean)",
               title="where a step's time goes")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
