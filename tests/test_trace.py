"""`real-vllm trace` on the tiny model with a tiny THF: one row per generated token, the REAL
threshold of each step equal to a direct THF forward on that step's context, and a PNG whose
panels plot exactly those per-step figures (p_t on [0, 1]), titled with the prompt and every
parameter."""

import pytest

from real_vllm import trace
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
    assert png.stat().st_size > 0
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == len(seen["output"]) == 10
    tokens = seen["prompt"] + seen["output"]
    for t in (0, 4, 9):
        want = direct_threshold(thf, tokens[: len(seen["prompt"]) + t], 0.9, 0.5)
        assert seen["figures"]["threshold"][t] == pytest.approx(float(want), abs=1e-5)

    # The picture: one panel per kind of figure, each series the per-step figures above.
    figures, fig = seen["figures"], seen["fig"]
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
