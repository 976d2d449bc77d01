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

    def plot_spy(tokens, figures, path, title):
        seen.update(tokens=tokens, title=title)
        seen["fig"] = original_plot(tokens, figures, path, title)
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
