"""REAL's cross-tokenizer path: what re-tokenising costs per decode step, next to the THF forward.

    python -m benchmarks.bench_retokenize            # rows {1, 8, 32, 64}, 200 steps each
    python -m benchmarks.bench_retokenize --quick    # rows {1, 8}, 20 steps

Served model and THF have different tokenizers (the tiny test model's BPE and SmolLM2's, both
directions). Each row starts from a 64-token prompt of real prose and gains one served token
per step, as in decoding; a step is `Retokenizer.windows` for all rows (one batched decode, one
batched encode) and, in the same run, the shipped THF's forward on the same windows. Writes
benchmarks/results/retokenize[_quick]_<machine>.csv and prints the table.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, machine_name, write_csv

PROMPT_TOKENS = 64


def prose() -> str:
    docs = (inspect.getdoc(f) or "" for f in (np.linspace, np.einsum, np.histogram, inspect.signature))
    return "\n\n".join(docs) + " Café — naïve façade, 北京, Zürich: 3.5 m².\n"


def time_steps(retok, thf, ids: list[int], rows: int, steps: int) -> tuple[float, float]:
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
        with torch.inference_mode():
            thf.residual_entropy(*right_aligned_windows(windows, thf.window))
        retok_s, thf_s = retok_s + t1 - t0, thf_s + time.perf_counter() - t1
    return retok_s / steps * 1e3, thf_s / steps * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from real_vllm.thf.model import THFModel
    from real_vllm.thf.retokenize import Retokenizer
    from real_vllm.thf.runtime import SHIPPED_CHECKPOINT, THFRuntime
    from tests.tiny_model import build_tiny_llama

    tiny_dir = build_tiny_llama(Path.home() / ".cache" / "real_vllm" / "bench-tiny-llama")
    tokenizers = {"tiny": AutoTokenizer.from_pretrained(str(tiny_dir)),
                  "smollm2": AutoTokenizer.from_pretrained(str(SHIPPED_CHECKPOINT))}
    thf = THFRuntime(THFModel.load(SHIPPED_CHECKPOINT, device="cpu"), torch.device("cpu"))
    row_counts, steps = ((1, 8), 20) if args.quick else ((1, 8, 32, 64), 200)
    text = prose() * 40
    results = []
    for served, target in (("tiny", "smollm2"), ("smollm2", "tiny")):
        ids = tokenizers[served](text, add_special_tokens=False)["input_ids"]
        for rows in row_counts:
            retok = Retokenizer(tokenizers[served], tokenizers[target], thf.window)
            retok_ms, thf_ms = time_steps(retok, thf, ids, rows, steps)
            results.append({"served": served, "thf_tokenizer": target, "rows": rows, "steps": steps,
                            "retokenize_ms": round(retok_ms, 3), "thf_forward_ms": round(thf_ms, 3),
                            "retokenize_us_per_row": round(retok_ms / rows * 1e3, 1),
                            "retokenize_over_thf": round(retok_ms / thf_ms, 3),
                            "threads": torch.get_num_threads()})
    out = RESULTS / f"retokenize{'_quick' if args.quick else ''}_{machine_name()}.csv"
    write_csv(out, results)
    print(f"{'served -> THF tokenizer':<24}{'rows':>6}{'retokenize ms':>15}{'THF fwd ms':>12}{'ratio':>8}")
    for r in results:
        print(f"{r['served'] + ' -> ' + r['thf_tokenizer']:<24}{r['rows']:>6}{r['retokenize_ms']:>15.2f}"
              f"{r['thf_forward_ms']:>12.2f}{r['retokenize_over_thf']:>8.3f}")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
