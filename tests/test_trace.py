"""`real-vllm trace` on the tiny model with a tiny THF: one row per generated token, each step's
H and EDT temperature equal to the reference ops on the model's logits before that token and
its REAL threshold to a direct THF forward on that step's context, the printed table showing
those figures, and a PNG that is the returned figure, whose panels plot exactly those per-step
figures (p_t on [0, 1]), titled with the prompt and every parameter."""

import io

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from transformers import AutoModelForCausalLM

from real_vllm import reference, trace
from tests.conftest import engine_env
from tests.test_real import direct_threshold
from tests.thf_fixtures import build_tiny_thf

pytestmark = pytest.mark.engine


def test_trace_prints_every_token_and_writes_a_png(tiny_model_dir, tmp_path, capsys, monkeypatch):
    thf = build_tiny_thf(tmp_path / "thf", tiny_model_dir)
    png = tmp_path / "trace.png"
    seen = {}
    original = trace.step_figures

    def spy(model, prompt_ids, output_ids, xargs, thf_path):
        seen.update(prompt=prompt_ids, output=output_ids)
        seen["figures"] = original(model, prompt_ids, output_ids, xargs, thf_path)
        return seen["figures"]

    def plot_spy(traces, path):
        [only] = traces
        seen.update(tokens=only.tokens, title=only.title, others=only.others)
        seen["fig"] = original_plot(traces, path)
        return seen["fig"]

    original_plot = trace.plot
    monkeypatch.setattr(trace, "step_figures", spy)
    monkeypatch.setattr(trace, "plot", plot_spy)
    with engine_env():
        trace.main(["The module", "--sampler", "edt+real", "--xargs", '{"real_p0": 0.9, "real_decay_temperature": 0.5}',
                    "--model", str(tiny_model_dir), "--thf", str(thf), "--max-tokens", "10",
                    "--png", str(png), "--no-color"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == len(seen["output"]) == 10
    # Each step's figures, recomputed here: H and EDT's T from the model's logits before that
    # token, REAL's p_t from a direct THF forward on the context the processor saw.
    assert seen["others"] == {}
    prompt, tokens = seen["prompt"], seen["prompt"] + seen["output"]
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = lm(torch.tensor([tokens])).logits[0, len(prompt) - 1:-1]
    figures = seen["figures"]
    assert figures["entropy"] == pytest.approx(reference.entropy(logits).tolist(), rel=1e-4, abs=1e-5)
    assert figures["temperature"] == pytest.approx(reference.edt_temperature(logits, 1.0, 0.8, 1.0).tolist(), rel=1e-4)
    for t in range(10):
        want = direct_threshold(thf, tokens[: len(prompt) + t], 0.9, 0.5)
        assert figures["threshold"][t] == pytest.approx(float(want), abs=1e-5)
    # The printed table: one row per token, H T c d p_t as computed.
    for t, line in enumerate(rows):
        printed = [float(v) for v in line[24:].split()]
        assert printed == pytest.approx([figures[k][t] for k in ("entropy", "temperature", "asymptote", "residual",
                                                                 "threshold")], abs=5e-4), line

    # The picture: one panel per kind of figure, each series the per-step figures above; the
    # PNG on disk is exactly that figure, rendered.
    fig = seen["fig"]
    rendered = io.BytesIO()
    fig.savefig(rendered, dpi=120, format="png")
    written = imread(png)
    assert written.shape[:2] == (round(fig.get_figheight() * 120), round(fig.get_figwidth() * 120))
    assert np.array_equal(written, imread(io.BytesIO(rendered.getvalue()), format="png"))
    entropies, thresholds, temperatures = fig.axes
    series = {line.get_label(): list(line.get_ydata()) for line in entropies.get_lines()}
    assert series == {"LLM entropy H": figures["entropy"], "THF asymptotic entropy c": figures["asymptote"],
                      "residual entropy d = E(s_ref) - c": figures["residual"]}
    assert entropies.get_ylabel() == "entropy (nats)"
    (p_t,) = thresholds.get_lines()
    assert list(p_t.get_ydata()) == figures["threshold"] and thresholds.get_ylim() == (0.0, 1.0)
    assert thresholds.get_ylabel() == "REAL threshold p_t"
    (temperature,) = temperatures.get_lines()
    assert list(temperature.get_ydata()) == figures["temperature"] and temperatures.get_ylabel() == "EDT temperature T"
    assert temperatures.get_ylim()[0] == 0.0 and temperatures.get_ylim()[1] >= max(figures["temperature"])
    for ax in fig.axes:
        assert list(ax.get_lines()[0].get_xdata()) == list(range(10))
    assert [t.get_text() for t in temperatures.get_xticklabels()] == seen["tokens"]
    assert entropies.get_title() == seen["title"] == (
        "real-vllm trace 'The module' (raw completion)\n"
        "sampler edt+real: edt_t0=1, edt_n=0.8, edt_theta=1, real_p0=0.9, real_decay_temperature=0.5; "
        "seed 0, max_tokens 10")


def test_trace_compares_thfs_on_the_same_tokens_of_several_prompts(tiny_model_dir, tmp_path, capsys, monkeypatch):
    thf = build_tiny_thf(tmp_path / "thf", tiny_model_dir)
    thf_b = build_tiny_thf(tmp_path / "thf_b", tiny_model_dir, seed=1)
    png = tmp_path / "both.png"
    seen = {"engines": []}
    original_generate, original_plot = trace.generate, trace.plot

    def generate_spy(model, prompts, xargs, args, served):
        seen["engines"].append((list(prompts), served))
        seen["generated"] = original_generate(model, prompts, xargs, args, served)
        return seen["generated"]

    def plot_spy(traces, path):
        seen["traces"] = traces
        seen["fig"] = original_plot(traces, path)
        return seen["fig"]

    monkeypatch.setattr(trace, "generate", generate_spy)
    monkeypatch.setattr(trace, "plot", plot_spy)
    prompts = ["The module", "Once upon"]
    with engine_env():
        trace.main([*prompts, "--sampler", "real", "--xargs", '{"real_decay_temperature": 0.5}', "--model",
                    str(tiny_model_dir), "--thf", str(thf), "--thf", str(thf_b), "--max-tokens", "6",
                    "--png", str(png), "--no-color"])
    out = capsys.readouterr().out
    # One engine for both prompts, served with the first THF.
    assert seen["engines"] == [(prompts, thf)]
    traces = seen["traces"]
    assert [t.thf for t in traces] == ["thf", "thf"] and [list(t.others) for t in traces] == [["thf_b"], ["thf_b"]]
    for (prompt_ids, output_ids), t in zip(seen["generated"], traces):
        tokens = prompt_ids + output_ids
        for step in range(len(output_ids)):  # each THF's p_t on the same context, as a direct forward gives
            context = tokens[: len(prompt_ids) + step]
            assert t.figures["threshold"][step] == pytest.approx(float(direct_threshold(thf, context, 1.0, 0.5)), abs=1e-5)
            assert t.others["thf_b"]["threshold"][step] == pytest.approx(
                float(direct_threshold(thf_b, context, 1.0, 0.5)), abs=1e-5)
        assert t.others["thf_b"]["threshold"] != t.figures["threshold"]  # two THFs, two thresholds
    # The table: the second THF's c, d, p_t after the first's, per prompt.
    assert out.count("prompt: ") == 2
    headers = [line.split() for line in out.splitlines() if line.lstrip().startswith("#")]
    assert headers == [["#", "token", "H", "c", "d", "p_t", "c[thf_b]", "d[thf_b]", "p_t[thf_b]"]] * 2
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    flat = [(t, i) for t in traces for i in range(len(t.tokens))]
    assert len(rows) == len(flat) == 12
    for line, (t, i) in zip(rows, flat):
        printed = [float(v) for v in line[24:].split()]
        want = [t.figures[k][i] for k in ("entropy", "asymptote", "residual", "threshold")]
        want += [t.others["thf_b"][k][i] for k in ("asymptote", "residual", "threshold")]
        assert printed == pytest.approx(want, abs=5e-4), line
    # The picture: a column per prompt; each p_t panel has both THFs' thresholds on [0, 1].
    fig = seen["fig"]
    assert len(fig.axes) == 4 and imread(png).shape[1] == round(fig.get_figwidth() * 120)
    for column, t in enumerate(traces):
        entropies, thresholds = fig.axes[column], fig.axes[2 + column]
        lines = {line.get_label(): list(line.get_ydata()) for line in thresholds.get_lines()}
        assert lines == {"p_t, THF thf (served)": t.figures["threshold"], "p_t, THF thf_b": t.others["thf_b"]["threshold"]}
        assert thresholds.get_ylim() == (0.0, 1.0)
        series = {line.get_label(): list(line.get_ydata()) for line in entropies.get_lines()}
        assert series["c, THF thf_b"] == t.others["thf_b"]["asymptote"] and series["d, THF thf"] == t.figures["residual"]
        assert entropies.get_title().startswith(f"real-vllm trace {prompts[column]!r} (raw completion)")
        assert entropies.get_title().endswith("\nTHF thf served; thf_b on the same tokens")
