"""``make demo``: serve the embedded default model with ``--sampler edt`` and compare plain
sampling with EDT on a few prompts through the OpenAI client."""

from __future__ import annotations

import argparse
import textwrap
import time

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three planets of the solar system.",
]
# The server default is EDT, so the plain rows opt out.
SETTINGS = [  # (label, temperature, vllm_xargs)
    ("greedy", 0.0, {"sampler": "none"}),
    ("plain T=1.0", 1.0, {"sampler": "none"}),
    ("EDT t0=1.0 theta=1.0", 1.0, {}),
    ("EDT t0=0.7 theta=1.0", 1.0, {"edt_t0": 0.7}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="real-vllm demo", description=__doc__)
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from openai import OpenAI

    from real_vllm.assets import default_model_dir
    from real_vllm.server import LocalServer

    model = args.model or str(default_model_dir())
    print(f"model: {model}")
    rows = []
    with LocalServer(model, ["--sampler", "edt"], progress=True) as server:
        print(f"server: {server.base_url} (--sampler edt), log: {server.log_path}")
        client = OpenAI(base_url=server.base_url, api_key="unused")
        served = client.models.list().data[0].id
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
