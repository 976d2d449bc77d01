"""`real-vllm demo`'s rows: valid requests for its one --sampler sled server (no server here;
`make demo` runs it end to end)."""

import json

from real_vllm import demo
from real_vllm.methods import parse_sampler_args
from real_vllm.methods.real import REALConfig


def test_every_row_names_its_sampler_and_parses():
    samplers = []
    for label, temperature, xargs in demo.SETTINGS:
        request = parse_sampler_args(xargs)  # raises on a bad key or value
        samplers.append(xargs["sampler"])
        # The server's default is SLED: a row that set no sampler would get SLED silently.
        assert "sampler" in xargs, label
        # EDT and REAL refuse a temperature other than 1 (or 0, greedy).
        if request.edt is not None or request.real is not None:
            assert temperature == 1.0, label
    assert samplers == ["none", "none", "edt", "real", "sled"]


def test_real_row_and_trace_show_reals_defaults():
    xargs = dict(demo.SETTINGS[3][2])
    default = REALConfig()
    assert parse_sampler_args(xargs).real == default
    assert parse_sampler_args({"sampler": "real", **json.loads(demo.TRACE_XARGS)}).real == default
    assert f"decay={default.decay_temperature:g}" in demo.SETTINGS[3][0]
