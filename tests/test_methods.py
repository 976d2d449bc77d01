"""Request parsing and validation: every bad value is refused with the parameter's name."""

import math

import pytest

from real_vllm.methods import SAMPLERS, parse_sampler_args
from real_vllm.methods.edt import EDTConfig


def test_defaults_follow_algorithms_md():
    assert EDTConfig() == EDTConfig(t0=1.0, n=0.8, theta=1.0)


def test_no_sampler_is_plain_vllm():
    assert parse_sampler_args(None).methods == ()
    assert parse_sampler_args({"unrelated_key": 3}).methods == ()


def test_request_overrides_server_default():
    req = parse_sampler_args({"edt_t0": 0.7}, {"sampler": "edt", "edt_t0": 1.3, "edt_theta": 2.0})
    assert req.sampler == "edt" and req.edt == EDTConfig(t0=0.7, theta=2.0)
    assert parse_sampler_args({"sampler": "none"}, {"sampler": "edt"}).edt is None


@pytest.mark.parametrize(
    "args, name",
    [
        ({"sampler": "edtt"}, "sampler"),
        ({"sampler": 3}, "sampler"),
        ({"sampler": ["edt"]}, "sampler"),
        ({"sampler": "edt", "edt_t0": "0.7"}, "edt_t0"),
        ({"sampler": "edt", "edt_t0": True}, "edt_t0"),
        ({"sampler": "edt", "edt_t0": math.nan}, "edt_t0"),
        ({"sampler": "edt", "edt_t0": math.inf}, "edt_t0"),
        ({"sampler": "edt", "edt_t0": 0}, "edt_t0"),
        ({"sampler": "edt", "edt_t0": -0.5}, "edt_t0"),
        ({"sampler": "edt", "edt_n": 1.0}, "edt_n"),
        ({"sampler": "edt", "edt_n": 0.0}, "edt_n"),
        ({"sampler": "edt", "edt_n": 1.5}, "edt_n"),
        ({"sampler": "edt", "edt_theta": -1}, "edt_theta"),
        ({"sampler": "edt", "edt_theta": 1e308}, "edt_theta"),  # overflows float32 (fuzzer find)
        ({"sampler": "edt", "edt_theta": [1.0]}, "edt_theta"),
        ({"edt_theta": -1}, "edt_theta"),  # validated even when the sampler comes from the server
        ({"sampler": "edt", "edt_tzero": 0.7}, "edt_tzero"),
        ({"sampler": "real", "real_p0": 0.0}, "real_p0"),
        ({"sampler": "real", "real_p0": 1.5}, "real_p0"),
        ({"sampler": "real", "real_p0": "0.9"}, "real_p0"),
        ({"sampler": "real", "real_decay_temperature": 0}, "real_decay_temperature"),
        ({"sampler": "real", "real_decay_temperature": -2.0}, "real_decay_temperature"),
        ({"sampler": "edt+real", "real_decay_temperature": float("nan")}, "real_decay_temperature"),
        ({"sampler": "real", "real_thf": "/tmp/x"}, "real_thf"),  # a server setting, not per request
        ({"sampler": "real", "real_retokenize": True}, "real_retokenize"),
    ],
)
def test_bad_values_name_the_parameter(args, name):
    with pytest.raises(ValueError, match=name):
        parse_sampler_args(args)


def test_real_defaults_and_composition():
    from real_vllm.methods.real import REALConfig

    assert REALConfig() == REALConfig(p0=1.0, decay_temperature=4.0)
    req = parse_sampler_args({"sampler": "edt+real", "real_p0": 0.9})
    assert req.methods == ("edt", "real") and req.edt == EDTConfig() and req.real == REALConfig(p0=0.9)


def test_every_sampler_name_parses():
    for name in SAMPLERS:
        assert parse_sampler_args({"sampler": name}).sampler == name
