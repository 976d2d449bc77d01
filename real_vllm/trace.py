"""``real-vllm trace``: what EDT and REAL see at every generated token.

    real-vllm trace "The capital of France is" --sampler real [--png trace.png]

Generates through vLLM with the chosen sampler (the prompt completed as text; --chat sends it
as a user message through the chat template), then recomputes, for every generated token,
the figures the sampler used at that step: the LLM's entropy H (nats, raw logits), and for
REAL the THF's predicted asymptotic entropy c, the residual entropy d = E(s_ref) - c and
the threshold p_t = min(1, p0 exp(-d / decay)) (the same windows and THF as the processor);
for EDT the temperature T. Prints one coloured row per token and writes a PNG (one panel each for the entropies,
p_t on [0, 1] and T; the title names the prompt and every parameter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from real_vllm import ops
from real_vllm.methods import parse_sampler_args
from real_vllm.methods.edt import MIN_SCALE
from real_vllm.thf import curves

GREEN, YELLOW, RED, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[0m"


def generate(model: str, prompt: str, xargs: dict, args) -> tuple[list[int], list[int]]:
    """Prompt ids and generated ids from vLLM with the sampler in xargs."""
    from vllm import LLM, SamplingParams

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    extra = {"real_thf": args.thf} if args.thf else {}
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0, additional_config=extra)
    params = SamplingParams(temperature=1.0, seed=args.seed, max_tokens=args.max_tokens, extra_args=xargs)
    try:
        if args.chat:
            out = llm.chat([{"role": "user", "content": prompt}], params, use_tqdm=False)[0]
        else:
            out = llm.generate([prompt], params, use_tqdm=False)[0]
    finally:
        llm.llm_engine.engine_core.shutdown()
    return list(out.prompt_token_ids), list(out.outputs[0].token_ids)


def step_figures(model: str, prompt_ids: list[int], output_ids: list[int], xargs: dict, thf_path) -> dict:
    """Per generated token: H, and the EDT / REAL quantities of that step."""
    from transformers import AutoModelForCausalLM

    request = parse_sampler_args(xargs)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids + output_ids])
    with torch.inference_mode():
        logits = lm(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    figures = {"entropy": ops.entropy(logits).tolist()}
    if request.edt is not None:
        e = request.edt
        figures["temperature"] = ops.edt_temperature(logits, e.t0, e.n, e.theta, MIN_SCALE).tolist()
        if request.real is not None:  # REAL's nucleus sees the EDT-scaled logits
            logits = logits / torch.tensor(figures["temperature"])[:, None]
    if request.real is not None:
        from real_vllm.thf.runtime import THFRuntime, resolve_checkpoint, right_aligned_windows

        path, _ = resolve_checkpoint(thf_path)
        if path is None:
            raise SystemExit("real-vllm trace: REAL needs a THF checkpoint (--thf PATH)")
        thf = THFRuntime.load(path, torch.device("cpu"), tokenizer=model)
        # The context the processor saw before each generated token.
        tokens = prompt_ids + output_ids
        contexts = [tokens[: len(prompt_ids) + t] for t in range(len(output_ids))]
        windows, lengths = right_aligned_windows(contexts, thf.context)
        params = thf.curve_params(windows, lengths)
        c = curves.asymptote(params, thf.config.curve)
        d = curves.residual_entropy(params, thf.config.s_ref, thf.config.curve)
        figures.update(
            asymptote=c.tolist(),
            residual=d.tolist(),
            threshold=curves.threshold(d, request.real.p0, request.real.decay_temperature).tolist(),
        )
    return figures


def print_rows(tokens: list[str], figures: dict, colour: bool) -> None:
    cols = [k for k in ("entropy", "temperature", "asymptote", "residual", "threshold") if k in figures]
    names = {"entropy": "H", "temperature": "T", "asymptote": "c", "residual": "d", "threshold": "p_t"}
    print(f"{'#':>4}  {'token':<18}" + "".join(f"{names[c]:>8}" for c in cols))
    for i, tok in enumerate(tokens):
        line = f"{i:>4}  {tok!r:<18}"[:24] + "".join(f"{figures[c][i]:>8.3f}" for c in cols)
        key = figures.get("threshold") or figures.get("temperature")
        if colour and key is not None:
            v = key[i] / max(max(key), 1e-9)
            line = (GREEN if v > 0.8 else YELLOW if v > 0.5 else RED) + line + RESET
        print(line)


# What each plotted series is (the legend) and the panel it goes to.
ENTROPY_SERIES = {"entropy": "LLM entropy H", "asymptote": "THF asymptotic entropy c", "residual": "residual entropy d = E(s_ref) - c"}


def describe(prompt: str, xargs: dict, args) -> str:
    """The plot's title: the prompt, how it was sent, the sampler with every parameter (defaults
    filled in), the seed and the token budget."""
    request = parse_sampler_args(xargs)
    params = []
    for config in (request.edt, request.real):
        if config is not None:
            params += [f"{key}={getattr(config, field):g}" for key, field in config.PARAMS.items()]
    mode = "chat template" if args.chat else "raw completion"
    return (f"real-vllm trace {prompt!r} ({mode})\n"
            f"sampler {request.sampler}: {', '.join(params)}; seed {args.seed}, max_tokens {args.max_tokens}")


def plot(tokens: list[str], figures: dict, path: str, title: str):
    """One panel per kind of figure, x = the generated tokens: the entropies (nats), REAL's p_t
    (on [0, 1]) and EDT's T; writes ``path`` and returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    panels = ["entropy"] + [k for k in ("threshold", "temperature") if k in figures]
    fig = Figure(figsize=(max(8, 0.28 * len(tokens)), 2.6 + 2.0 * len(panels)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    x = list(range(len(tokens)))
    for ax, panel in zip(axes, panels):
        if panel == "entropy":
            for key, label in ENTROPY_SERIES.items():
                if key in figures:
                    ax.plot(x, figures[key], marker=".", label=label)
            ax.set_ylabel("entropy (nats)")
            ax.legend(fontsize=8, loc="upper right")
        elif panel == "threshold":
            ax.plot(x, figures["threshold"], "k.--", label="REAL's threshold p_t")
            ax.set_ylim(0.0, 1.0)
            ax.set_ylabel("REAL threshold p_t")
        else:
            ax.plot(x, figures["temperature"], "m.:", label="EDT's temperature T")
            ax.set_ylim(0.0, 1.05 * max(figures["temperature"], default=1.0))
            ax.set_ylabel("EDT temperature T")
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(tokens, rotation=90, fontsize=7)
    axes[-1].set_xlabel("generated token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="real-vllm trace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--sampler", default="real", choices=["real", "edt", "edt+real"])
    parser.add_argument("--xargs", default="{}", help='more request parameters as JSON, e.g. \'{"real_decay_temperature": 1.0}\'')
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--thf", help="THF checkpoint (default: --real-thf's defaults: $REAL_VLLM_THF or the shipped one)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message through the model's chat template (default: "
                             "complete it as text)")
    parser.add_argument("--png", default="trace.png")
    parser.add_argument("--no-color", action="store_true")
    args = parser.parse_args(argv)
    try:
        xargs = {"sampler": args.sampler, **json.loads(args.xargs)}
        parse_sampler_args(xargs)
    except ValueError as e:
        parser.error(str(e))
    if args.model:
        model = args.model
    else:
        from real_vllm.assets import default_model_dir

        model = str(default_model_dir())
    prompt_ids, output_ids = generate(model, args.prompt, xargs, args)
    figures = step_figures(model, prompt_ids, output_ids, xargs, args.thf)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = [tokenizer.decode([t]) for t in output_ids]
    print(f"text: {tokenizer.decode(output_ids)!r}\n")
    print_rows(tokens, figures, colour=sys.stdout.isatty() and not args.no_color)
    plot(tokens, figures, args.png, describe(args.prompt, xargs, args))
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
