"""EDT's op against vLLM's temperature step in thread CPU time, on one thread.

    python -m benchmarks.bench_edt_cpu            # batch {1,2,4,8,64,128,256} x vocab {49152,151936}, 3 runs

The op table (benchmarks.bench_ops) times wall clock on every thread. On a shared, loaded
machine that measures the scheduler: a parallel region waits whole time slices for a thread
that was descheduled. CPU time of the calling thread, with torch on one thread, counts only
the op's own work (its memory stalls included), so the ratio to vLLM stays comparable there.
It says nothing about the intra-row threading at small batch, which only the wall clock on
several threads shows.

Same inputs and calls as bench_ops' edt rows (ops.apply_edt in place vs
Sampler.apply_temperature); each run gets a fresh copy of the input (untimed), ours and
vLLM's alternate run by run. Reported: the medians and their ratio, and the median and
quartiles of the run-by-run ratios (the spread), and the load average when the shape
finished: at batch 1-8, where the rows are L2-resident, the ratio moves with the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm import tqdm

from benchmarks.bench_ops import our_paths, vllm_paths
from benchmarks.common import RESULTS
from real_vllm.utils import machine_name, write_csv

# Issue 20's targets: <= 2.0x vLLM's temperature step at batch 1-8, <= 1.6x at batch >= 64,
# on the default model's vocabulary (SmolLM2, 49,152) and Qwen's (151,936).
BATCHES = (1, 2, 4, 8, 64, 128, 256)
VOCABS = (49152, 151936)


def thread_ms(fn) -> float:
    start = time.thread_time_ns()
    fn()
    return (time.thread_time_ns() - start) / 1e6


def run(batches, vocabs, reps) -> list[dict]:
    vllm = vllm_paths().get("edt")
    if vllm is None:
        raise SystemExit("vLLM is not importable here: nothing to compare with")
    paths = {"vllm": vllm[1], "ours": our_paths("cpu")["edt"][1]}
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for batch, vocab in tqdm([(b, v) for b in batches for v in vocabs], desc="edt, cpu time", unit="shape"):
        logits = torch.randn(batch, vocab, generator=gen) * 2.0
        args = {"t0": torch.full((batch,), 0.9), "theta": torch.full((batch,), 1.0)}
        work = torch.empty_like(logits)
        times = {name: [] for name in paths}
        for rep in range(reps + 1):  # the first run of each is a warm-up
            for name, fn in paths.items():
                work.copy_(logits)
                ms = thread_ms(lambda: fn(work, args))
                if rep:
                    times[name].append(ms)
        ratios = sorted(o / v for o, v in zip(times["ours"], times["vllm"]))
        ours_ms, vllm_ms = statistics.median(times["ours"]), statistics.median(times["vllm"])
        rows.append({
            "batch": batch,
            "vocab": vocab,
            "threads": torch.get_num_threads(),
            "ours_cpu_ms": round(ours_ms, 4),
            "vllm_temperature_cpu_ms": round(vllm_ms, 4),
            "ratio": round(ours_ms / vllm_ms, 3),
            "ratio_run_median": round(statistics.median(ratios), 3),
            "ratio_q1": round(ratios[len(ratios) // 4], 3),
            "ratio_q3": round(ratios[(3 * len(ratios)) // 4], 3),
            "reps": reps,
            "load_1min": round(os.getloadavg()[0], 2),  # the machine is shared: say how busy
        })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=41)
    parser.add_argument("--runs", type=int, default=3, help="whole sweeps, one after another (the load moves)")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/edt_cputime_<machine>.csv)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [{"run": i + 1, **row} for i in range(args.runs) for row in run(BATCHES, VOCABS, args.reps)]
    path = args.out or RESULTS / f"edt_cputime_{machine_name()}.csv"
    write_csv(path, rows)
    print(f"{'run':>3} {'batch':>5} {'vocab':>7} {'ours ms':>9} {'vLLM ms':>9} {'ratio':>6}  run-by-run median (IQR)  load")
    for r in rows:
        print(f"{r['run']:>3} {r['batch']:>5} {r['vocab']:>7} {r['ours_cpu_ms']:>9.4f} {r['vllm_temperature_cpu_ms']:>9.4f}"
              f" {r['ratio']:>6.3f}  {r['ratio_run_median']:.2f} ({r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})  {r['load_1min']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
