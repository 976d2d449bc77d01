"""``real-vllm trace``: what EDT and REAL see at every generated token.

    real-vllm trace "The capital of France is" --sampler real [--png trace.png]
    real-vllm trace "Albert Einstein was born in" "Once upon a time" --thf smollm2 --thf MY_THF

Generates through vLLM with the chosen sampler (the prompt completed as text; --chat sends it
as a user message through the chat template), then recomputes, for every generated token,
the figures the sampler used at that step: the LLM's entropy H (nats, raw logits), and for
REAL the THF's predicted asymptotic entropy c, the residual entropy d = E(s_ref) - c and
the threshold p_t = min(1, p0 exp(-d / decay)) (the same windows and THF as the processor);
for EDT the temperature T. Prints one coloured row per token and writes a PNG (one panel each for the entropies,
p_t on [0, 1] and T; the title names the prompt and every parameter).

Several prompts run in one engine, one column of the PNG each. Several --thf: the first serves
the generation; c, d and p_t of every other THF are computed on the same tokens (what that THF
would have set at each step of this text), printed and plotted beside the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from real_vllm import ops
from real_vllm.methods import parse_sampler_args
from real_vllm.methods.edt import MIN_SCALE
from real_vllm.thf import curves

GREEN, YELLOW, RED, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[0m"


def generate(model: str, prompts: list[str], xargs: dict, args, thf) -> list[tuple[list[int], list[int]]]:
    """Prompt ids and generated ids of each prompt from vLLM with the sampler in xargs, REAL's THF
    ``thf`` (None: the engine's default), all prompts in one engine."""
    from vllm import LLM, SamplingParams

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    extra = {"real_thf": str(thf)} if thf else {}
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0, additional_config=extra)
    params = SamplingParams(temperature=1.0, seed=args.seed, max_tokens=args.max_tokens, extra_args=xargs)
    try:
        if args.chat:
            outs = llm.chat([[{"role": "user", "content": prompt}] for prompt in prompts], params, use_tqdm=False)
        else:
            outs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    return [(list(out.prompt_token_ids), list(out.outputs[0].token_ids)) for out in outs]


def thf_figures(model: str, prompt_ids: list[int], output_ids: list[int], real, thf_path) -> dict:
    """REAL's figures of each generated token with the THF at thf_path: c, d and p_t (``real``:
    the request's REALConfig), from the context the processor saw before that token."""
    from real_vllm.thf.runtime import THFRuntime, resolve_checkpoint, right_aligned_windows

    path, _ = resolve_checkpoint(thf_path)
    if path is None:
        raise SystemExit("real-vllm trace: REAL needs a THF checkpoint (--thf PATH)")
    thf = THFRuntime.load(path, torch.device("cpu"), tokenizer=model)
    tokens = prompt_ids + output_ids
    # The context the processor saw before each generated token.
    contexts = [tokens[: len(prompt_ids) + t] for t in range(len(output_ids))]
    windows, lengths = right_aligned_windows(contexts, thf.context)
    params = thf.curve_params(windows, lengths)
    c = curves.asymptote(params, thf.config.curve)
    d = curves.residual_entropy(params, thf.config.s_ref, thf.config.curve)
    return {"asymptote": c.tolist(), "residual": d.tolist(),
            "threshold": curves.threshold(d, real.p0, real.decay_temperature).tolist()}


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
        figures.update(thf_figures(model, prompt_ids, output_ids, request.real, thf_path))
    return figures


@dataclass
class Trace:
    """One prompt's trace: its generated tokens, each step's figures (REAL's with the THF that
    served it, named thf), REAL's figures on the same steps with each other THF, the title."""

    tokens: list[str]
    figures: dict
    title: str
    thf: str = ""
    others: dict = field(default_factory=dict)   # THF name -> {"asymptote", "residual", "threshold"}


def print_rows(tokens: list[str], figures: dict, colour: bool, others: dict | None = None) -> None:
    """One row per token: H, T, c, d, p_t, then c, d, p_t of each other THF (named in the header)."""
    cols = [k for k in ("entropy", "temperature", "asymptote", "residual", "threshold") if k in figures]
    names = {"entropy": "H", "temperature": "T", "asymptote": "c", "residual": "d", "threshold": "p_t"}
    series = [(names[c], figures[c]) for c in cols]
    for thf, theirs in (others or {}).items():
        series += [(f"{names[c]}[{thf}]", theirs[c]) for c in ("asymptote", "residual", "threshold")]
    widths = [max(8, len(name) + 2) for name, _ in series]
    print(f"{'#':>4}  {'token':<18}" + "".join(f"{name:>{w}}" for (name, _), w in zip(series, widths)))
    for i, tok in enumerate(tokens):
        line = f"{i:>4}  {tok!r:<18}"[:24] + "".join(f"{values[i]:>{w}.3f}" for (_, values), w in zip(series, widths))
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


THF_COLOURS = ("tab:green", "tab:olive", "tab:cyan", "tab:pink")  # c, d and p_t of each THF


def plot(traces: list[Trace], path: str):
    """One column per trace (prompt), one panel per kind of figure, x = the generated tokens: the
    entropies (nats), REAL's p_t (on [0, 1]) and EDT's T; with several THFs each THF's c, d and p_t
    in its colour. Writes ``path`` and returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    panels = ["entropy"] + [k for k in ("threshold", "temperature") if k in traces[0].figures]
    widths = [max(8, 0.28 * len(t.tokens)) for t in traces]
    fig = Figure(figsize=(sum(widths), 2.6 + 2.0 * len(panels)))
    axes = fig.subplots(len(panels), len(traces), sharex="col", squeeze=False, gridspec_kw={"width_ratios": widths})
    for column, trace in zip(axes.T, traces):
        figures, compared = trace.figures, bool(trace.others)
        x = list(range(len(trace.tokens)))
        thfs = [(trace.thf, {k: figures[k] for k in ("asymptote", "residual", "threshold") if k in figures}),
                *trace.others.items()]
        for ax, panel in zip(column, panels):
            if panel == "entropy":
                if not compared:
                    for key, label in ENTROPY_SERIES.items():
                        if key in figures:
                            ax.plot(x, figures[key], marker=".", label=label)
                else:
                    ax.plot(x, figures["entropy"], "k.-", label=ENTROPY_SERIES["entropy"])
                    for (thf, theirs), colour in zip(thfs, THF_COLOURS):
                        ax.plot(x, theirs["asymptote"], ".-", color=colour, label=f"c, THF {thf}")
                        ax.plot(x, theirs["residual"], ".--", color=colour, label=f"d, THF {thf}")
                ax.set_ylabel("entropy (nats)")
                ax.legend(fontsize=8, loc="upper right")
            elif panel == "threshold":
                if not compared:
                    ax.plot(x, figures["threshold"], "k.--", label="REAL's threshold p_t")
                else:
                    for (thf, theirs), colour in zip(thfs, THF_COLOURS):
                        ax.plot(x, theirs["threshold"], ".--", color=colour,
                                label=f"p_t, THF {thf}" + (" (served)" if thf == trace.thf else ""))
                    ax.legend(fontsize=8, loc="lower right")
                ax.set_ylim(0.0, 1.0)
                ax.set_ylabel("REAL threshold p_t")
            else:
                ax.plot(x, figures["temperature"], "m.:", label="EDT's temperature T")
                ax.set_ylim(0.0, 1.05 * max(figures["temperature"], default=1.0))
                ax.set_ylabel("EDT temperature T")
            ax.grid(alpha=0.3)
        column[0].set_title(trace.title, fontsize=9)
        column[-1].set_xticks(x)
        column[-1].set_xticklabels(trace.tokens, rotation=90, fontsize=7)
        column[-1].set_xlabel("generated token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="real-vllm trace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="+", help="one or more prompts (one engine; one column of the PNG each)")
    parser.add_argument("--sampler", default="real", choices=["real", "edt", "edt+real"])
    parser.add_argument("--xargs", default="{}", help='more request parameters as JSON, e.g. \'{"real_decay_temperature": 1.0}\'')
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--thf", action="append", help="THF checkpoint folder or a shipped THF's name (default: "
                        "--real-thf's defaults: $REAL_VLLM_THF or the shipped one); repeat it to compare THFs on "
                        "the same text (the first serves the generation)")
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
    from real_vllm.thf.runtime import checkpoint_path, resolve_checkpoint

    try:
        thfs = [checkpoint_path(spec) for spec in args.thf or []]
    except ValueError as e:
        parser.error(f"--thf: {e}")
    real = parse_sampler_args(xargs).real
    served = thfs[0] if thfs else None
    served_name = Path(resolve_checkpoint(served)[0] or "").name if real is not None else ""
    others = {thf.resolve().name: thf for thf in thfs[1:]} if real is not None else {}
    if len(others) != len(thfs[1:]) or served_name in others:
        parser.error("--thf: the THFs' folder names name them in the table and the plot: they must differ")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    traces = []
    for prompt, (prompt_ids, output_ids) in zip(args.prompt, generate(model, args.prompt, xargs, args, served)):
        figures = step_figures(model, prompt_ids, output_ids, xargs, served)
        compared = {name: thf_figures(model, prompt_ids, output_ids, real, thf) for name, thf in others.items()}
        tokens = [tokenizer.decode([t]) for t in output_ids]
        if len(args.prompt) > 1:
            print(f"prompt: {prompt!r}")
        print(f"text: {tokenizer.decode(output_ids)!r}\n")
        print_rows(tokens, figures, colour=sys.stdout.isatty() and not args.no_color, others=compared)
        print()
        title = describe(prompt, xargs, args) + (f"\nTHF {served_name} served; {', '.join(others)} on the same tokens"
                                                 if others else "")
        traces.append(Trace(tokens, figures, title, served_name, compared))
    plot(traces, args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
