"""``real-vllm vs``: Verbalized Sampling from the command line.

    real-vllm vs "Tell me a joke about cats." -k 5 [--tau 0.1] [--method standard|cot|multi] [--json]

Without ``--base-url`` it starts a vLLM server on 127.0.0.1 with the embedded default model
(SmolLM2-135M-Instruct, CPU-friendly settings), asks it for k candidates with their
probabilities (the answer's format enforced with structured outputs), draws one, prints both
and stops the server. With ``--base-url`` it talks to any OpenAI-compatible server instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap

from real_vllm import verbalized as vs

# A sampler such as EDT replaces vLLM's temperature; another one on top would multiply in, so
# vLLM's stays neutral under --sampler.
SAMPLER_TEMPERATURE = 1.0
DEFAULT_TIMEOUT_S = 600.0
# The local server's context: k = 5 candidates of up to 300 characters plus the prompt fit.
LOCAL_MAX_MODEL_LEN = 4096
# The candidates table: text wrapped at this width, continuation lines indented this far.
TABLE_WIDTH = 88
_WRAP_INDENT = 22


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _xarg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:  # numbers and JSON literals as such; anything else stays a string
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="real-vllm vs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the user's prompt")
    p.add_argument("-k", type=int, default=vs.DEFAULT_K, help="number of candidates (default %(default)s)")
    p.add_argument("--tau", type=_probability, help="tail knob: ask for candidates whose probabilities are each below tau")
    p.add_argument("--method", choices=vs.METHODS, default="standard", help="VS variant (default %(default)s)")
    p.add_argument("-m", "--per-turn", type=int, dest="m", help="VS-Multi: candidates per turn (default ceil(k/2))")
    p.add_argument("--seed", type=int, default=0, help="seeds the generation and the draw (default %(default)s)")
    p.add_argument("--temperature", type=float,
                   help=f"sampling temperature (default {vs.DEFAULT_TEMPERATURE}; {SAMPLER_TEMPERATURE} with "
                        "--sampler, whose methods set their own)")
    p.add_argument("--top-p", type=float, default=vs.DEFAULT_TOP_P, help="default %(default)s")
    p.add_argument("--sampler", help="decoding sampler on the server, sent as vllm_xargs (e.g. edt; default "
                                     "none: plain sampling at --temperature, whatever the server's default)")
    p.add_argument("--xarg", type=_xarg, action="append", default=[], metavar="KEY=VALUE",
                   help="more vllm_xargs for the sampler, e.g. --xarg edt_t0=0.7 (repeatable)")
    p.add_argument("--draw", choices=vs.WEIGHT_MODES, default="weight",
                   help="draw by the stated probabilities (weight), uniformly, or by their softmax")
    p.add_argument("--min-probability", type=float, help="keep candidates with stated probability >= this")
    p.add_argument("--min-k-survivors", type=int, default=1, help="with --min-probability: keep at least this many")
    p.add_argument("--max-text-chars", type=int, default=vs.DEFAULT_MAX_TEXT_CHARS,
                   help="longest candidate, in characters (default %(default)s)")
    p.add_argument("--max-tokens", type=int, help="per answer (default: a bound the answer cannot exceed)")
    p.add_argument("--structured", choices=("auto", "vllm", "json_schema", "none"), default="auto",
                   help="how to enforce the answer's format (default %(default)s: vLLM's structured outputs, "
                        "else response_format, else the prompt alone)")
    p.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (default: start one)")
    p.add_argument("--model", help="with --base-url: the served model name (default: the server's first); "
                                   "without: the model folder to serve (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"), help="default $OPENAI_API_KEY")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the distribution and the draw as JSON")
    return p


def run(args: argparse.Namespace, base_url: str) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    model = args.model if args.base_url and args.model else client.models.list().data[0].id
    # Always named: a server default such as EDT or REAL refuses a temperature of its own (HTTP
    # 400) and would otherwise change VS's plain sampling.
    sampler_args = {"sampler": args.sampler or "none", **dict(args.xarg)}
    if args.temperature is not None:
        temperature = args.temperature
    else:
        temperature = SAMPLER_TEMPERATURE if args.sampler else vs.DEFAULT_TEMPERATURE
    dist = vs.generate_openai(
        client, model, args.prompt, method=args.method, k=args.k, tau=args.tau, m=args.m,
        temperature=temperature, top_p=args.top_p, seed=args.seed, max_tokens=args.max_tokens,
        max_text_chars=args.max_text_chars, sampler_args=sampler_args, structured=args.structured,
        min_probability=args.min_probability, min_k_survivors=args.min_k_survivors,
    )
    index = dist.sample_index(args.seed, args.draw)
    return {"prompt": args.prompt, "distribution": dist,
            "draw": {"index": index, "seed": args.seed, "mode": args.draw, **dist.items[index].to_dict()}}


def candidates_table(dist: vs.Distribution, drawn: int | None = None, width: int = TABLE_WIDTH) -> str:
    """A readable table of the candidates, the drawn one marked."""
    lines = [f"{'':2}{'#':>2}  {'prob':>6}  {'stated':>8}  text", "-" * (width + _WRAP_INDENT)]
    for i, it in enumerate(dist.items):
        if it.stated is None:
            stated = "-"
        elif isinstance(it.stated, (int, float)) and not isinstance(it.stated, bool):
            try:
                stated = f"{it.stated:g}"
            except OverflowError:  # an int too large for a float: the parser weighed it 0
                stated = str(it.stated)
        else:
            stated = str(it.stated)
        wrapped = textwrap.wrap(" ".join(it.text.split()), width) or [""]
        mark = "->" if i == drawn else ""
        lines.append(f"{mark:2}{i + 1:>2}  {it.probability:6.3f}  {stated[:8]:>8}  {wrapped[0]}")
        lines += [f"{'':{_WRAP_INDENT}}{line}" for line in wrapped[1:]]
    return "\n".join(lines)


def print_result(result: dict, as_json: bool) -> None:
    dist: vs.Distribution = result["distribution"]
    if as_json:
        print(json.dumps({"prompt": result["prompt"], **dist.to_dict(), "draw": result["draw"]}, indent=2, ensure_ascii=False))
        return
    meta = dist.meta
    tau = "-" if meta.get("tau") is None else f"{meta['tau']:g}"
    print(f"prompt: {result['prompt']}")
    print(f"model: {os.path.basename(str(meta.get('model')).rstrip('/'))}  method: {meta.get('method')}  k: {meta.get('k')}  tau: {tau}  "
          f"T: {meta.get('temperature'):g}  structured: {meta.get('structured')}"
          + (f"  sampler: {meta['sampler_args']}" if meta.get("sampler_args") else ""))
    if dist.reasoning:
        print(f"reasoning: {' '.join(dist.reasoning.split())}")
    print()
    print(candidates_table(dist, drawn=result["draw"]["index"]))
    print()
    draw = result["draw"]
    print(f"drawn (seed {draw['seed']}, {draw['mode']}): #{draw['index'] + 1}, p = {draw['probability']:.3f}")
    print(f"  {draw['text']}")
    total = math.fsum(dist.probabilities)
    print(f"\n{len(dist)} candidates, probabilities sum to {total:.6f}")
    if dist.repairs:
        print("repairs: " + "; ".join(dist.repairs))


def main(argv: list[str] | None = None) -> None:
    """Run ``real-vllm vs``; exits with status 2 on bad options, 1 when no distribution came back."""
    args = build_parser().parse_args(argv)
    try:
        # Check the options here, before a server takes a minute to start.
        vs.build_messages(args.prompt, args.method, args.k, args.tau, m=args.m)
        vs.answer_schema(args.k, max_text_chars=args.max_text_chars)
        if args.max_tokens is not None and args.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        if args.min_probability is not None and not 0 <= args.min_probability <= 1:
            raise ValueError(f"--min-probability must be in [0, 1], got {args.min_probability:g}")
        if args.min_k_survivors < 1:
            raise ValueError(f"--min-k-survivors must be >= 1, got {args.min_k_survivors}")
    except ValueError as e:
        print(f"real-vllm vs: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        if args.base_url:
            result = run(args, args.base_url)
        else:
            from real_vllm.assets import default_model_dir
            from real_vllm.server import LocalServer

            model = args.model or str(default_model_dir())
            print(f"starting a vLLM server for {model} ...", file=sys.stderr)
            with LocalServer(model, ["--max-model-len", str(LOCAL_MAX_MODEL_LEN)], progress=True) as server:
                result = run(args, server.base_url)
    except (vs.VSParseError, vs.VSServerError) as e:
        print(f"real-vllm vs: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
