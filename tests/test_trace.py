"""`real-vllm trace` on the tiny model with a tiny THF: one row per generated token, the REAL
threshold of each step equal to a direct THF forward on that step's context, and a PNG."""

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

    monkeypatch.setattr(trace, "step_figures", spy)
    with engine_env():
        trace.main(["The module", "--sampler", "edt+real", "--xargs", '{"real_p0": 0.9, "real_decay_temperature": 0.5}',
                    "--model", str(tiny_model_dir), "--thf", str(thf), "--max-tokens", "10", "--raw",
                    "--png", str(png), "--no-color"])
    out = capsys.readouterr().out
    assert png.stat().st_size > 0
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == len(seen["output"]) == 10
    tokens = seen["prompt"] + seen["output"]
    for t in (0, 4, 9):
        want = direct_threshold(thf, tokens[: len(seen["prompt"]) + t], 0.9, 0.5)
        assert seen["figures"]["threshold"][t] == pytest.approx(float(want), abs=1e-5)
