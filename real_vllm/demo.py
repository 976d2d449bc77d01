"""``make demo``: one vLLM server of the embedded default model, started with ``--sampler sled``
(the server that can serve every sampler: SLED needs its early-layer wrapper at start-up, the
others are chosen per request), asked the same prompts with greedy, plain sampling, EDT, REAL
and SLED through the OpenAI client (each row's method and settings in ``vllm_xargs``); then,
with the server stopped, ``real-vllm trace`` on one prompt with REAL, whose per-token picture
(H, the THF's c and d, REAL's p_t) is written as a PNG under the folder printed at the end."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three planets of the solar system.",
]
# The server's default sampler is SLED, so every row names its own. Rows with a sampler keep
# temperature at 1 (EDT and REAL refuse another; REAL uses its defaults, real_p0 = 1.0 and
# real_decay_temperature = 4.0, written out here so the label says what ran). SLED's row is
# greedy, as the papers and the quality run evaluate it.
SETTINGS = [  # (label, temperature, vllm_xargs)
    ("greedy", 0.0, {"sampler": "none"}),
    ("plain T=1.0", 1.0, {"sampler": "none"}),
    ("EDT t0=1.0 theta=1.0", 1.0, {"sampler": "edt", "edt_t0": 1.0, "edt_theta": 1.0}),
    ("REAL p0=1.0 decay=4", 1.0, {"sampler": "real", "real_p0": 1.0, "real_decay_temperature": 4.0}),
    ("SLED greedy a=2 k=10", 0.0, {"sampler": "sled", "sled_alpha": 2.0, "sled_k": 10}),
]
TRACE_PROMPT = "The capital of France is"
TRACE_XARGS = '{"real_p0": 1.0, "real_decay_temperature": 4.0}'


def demo_dir() -> Path:
    from real_vllm.assets import cache_dir

    return cache_dir() / "demo"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="real-vllm demo", description=__doc__)
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help=f"folder for the trace PNG (default: {demo_dir()})")
    parser.add_argument("--no-trace", action="store_true", help="skip the trace picture")
    args = parser.parse_args(argv)

    from openai import OpenAI

    from real_vllm.assets import default_model_dir
    from real_vllm.server import LocalServer

    started = time.perf_counter()
    model = args.model or str(default_model_dir())
    print(f"model: {model}")
    rows = []
    with LocalServer(model, ["--sampler", "sled"], progress=True) as server:
        print(f"server: {server.base_url} (--sampler sled: serves none, edt, real, sled, dola), log: {server.log_path}")
        client = OpenAI(base_url=server.base_url, api_key="unused")
        served = client.models.list().data[0].id
        # One untimed request first: the first one pays for vLLM's warm-up, not for its sampler.
        client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                       temperature=0.0, extra_body={"vllm_xargs": {"sampler": "none"}})
        for prompt in PROMPTS:
            for label, temperature, xargs in SETTINGS:
                start = time.perf_counter()
                reply = client.chat.completions.create(
                    model=served,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=args.max_tokens,
                    temperature=temperature,
                    seed=args.seed,
                    extra_body={"vllm_xargs": xargs},
                )
                elapsed = time.perf_counter() - start
                tokens = reply.usage.completion_tokens
                rows.append((prompt, label, tokens / elapsed, reply.choices[0].message.content))
        print("stopping the server ...")
    print_table(rows)
    print("(tok/s: one request at a time; seed", args.seed, "for the sampled rows; the texts are the model's.)")
    print("REAL runs with the THF shipped for this model, a weak forecaster (its RECIPE.md): here it acts")
    print("as an adaptive top-p, not as the paper's hallucination forecaster.")
    if not args.no_trace:
        out = Path(args.out) if args.out else demo_dir()
        out.mkdir(parents=True, exist_ok=True)
        png = out / "trace_real.png"
        print(f"\nreal-vllm trace {TRACE_PROMPT!r} --sampler real --xargs '{TRACE_XARGS}' ...")
        cmd = [sys.executable, "-m", "real_vllm.cli", "trace", TRACE_PROMPT, "--sampler", "real",
               "--xargs", TRACE_XARGS, "--max-tokens", "24", "--seed", str(args.seed), "--png", str(png), "--no-color"]
        if args.model:
            cmd += ["--model", args.model]
        log = out / "trace.log"
        with open(log, "w") as f:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
            f.write(done.stdout)
        if done.returncode != 0:
            sys.stdout.write(done.stdout)
            raise SystemExit(f"real-vllm trace failed (exit {done.returncode}); its log: {log}")
        # vLLM's engine logs to stdout too: show the trace from its text line on.
        lines = done.stdout.splitlines(keepends=True)
        first = next((i for i, line in enumerate(lines) if line.startswith("text: ")), 0)
        sys.stdout.write("".join(lines[first:]))
        print(f"trace picture: {png} (vLLM's log of the trace: {log})")
    print(f"demo done in {time.perf_counter() - started:.0f} s")


def print_table(rows) -> None:
    width = 76
    last_prompt = None
    print()
    print(f"{'sampler':<22} {'tok/s':>6}  text")
    for prompt, label, speed, text in rows:
        if prompt != last_prompt:
            print("=" * (width + 31))
            print(f"prompt: {prompt}")
            print("-" * (width + 31))
            last_prompt = prompt
        lines = textwrap.wrap(" ".join(text.split()), width) or [""]
        print(f"{label:<22} {speed:6.1f}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<22} {'':>6}  {line}")
    print("=" * (width + 31))


if __name__ == "__main__":
    main()
