"""Request parsing and validation (every bad value refused by a message whose subject is the
parameter and that shows what was sent), defaults applied and composed, and the identity values
really being identities: the processors run EDT and REAL over every row of a step, rows of
other requests holding the method's identity parameters, so those rows must come out
bit-identical, on every backend and on the rows where rounding could bite."""

import math
import re
from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from real_vllm import ops
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods import SAMPLERS, parse_sampler_args
from real_vllm.methods.edt import MIN_SCALE, EDTConfig
from real_vllm.methods.real import REALConfig


def test_no_sampler_is_plain_vllm():
    assert parse_sampler_args(None).methods == ()
    assert parse_sampler_args({"unrelated_key": 3}).methods == ()


def test_request_overrides_server_default():
    req = parse_sampler_args({"edt_t0": 0.7}, {"sampler": "edt", "edt_t0": 1.3, "edt_theta": 2.0})
    assert req.sampler == "edt" and req.edt == EDTConfig(t0=0.7, theta=2.0)
    assert parse_sampler_args({"sampler": "none"}, {"sampler": "edt"}).edt is None


@pytest.mark.parametrize(
    "args, name, shown",
    [
        ({"sampler": "edtt"}, "sampler", "got 'edtt'"),
        ({"sampler": 3}, "sampler", "got 3"),
        ({"sampler": ["edt"]}, "sampler", "got ['edt']"),
        ({"sampler": "edt", "edt_t0": "0.7"}, "edt_t0", "got str '0.7'"),
        ({"sampler": "edt", "edt_t0": True}, "edt_t0", "got bool True"),
        ({"sampler": "edt", "edt_t0": math.nan}, "edt_t0", "got nan"),
        ({"sampler": "edt", "edt_t0": math.inf}, "edt_t0", "got inf"),
        ({"sampler": "edt", "edt_t0": 0}, "edt_t0", "got 0"),
        ({"sampler": "edt", "edt_t0": -0.5}, "edt_t0", "got -0.5"),
        ({"sampler": "edt", "edt_n": 1.0}, "edt_n", "got 1"),
        ({"sampler": "edt", "edt_n": 0.0}, "edt_n", "got 0"),
        ({"sampler": "edt", "edt_n": 1.5}, "edt_n", "got 1.5"),
        ({"sampler": "edt", "edt_theta": -1}, "edt_theta", "got -1"),
        ({"sampler": "edt", "edt_theta": 1e308}, "edt_theta", "got 1e+308"),  # overflows float32 (fuzzer find)
        ({"sampler": "edt", "edt_theta": [1.0]}, "edt_theta", "got list [1.0]"),
        ({"edt_theta": -1}, "edt_theta", "got -1"),  # validated even when the sampler comes from the server
        ({"sampler": "edt", "edt_tzero": 0.7}, "edt_tzero", None),
        ({"sampler": "real", "real_p0": 0.0}, "real_p0", "got 0"),
        ({"sampler": "real", "real_p0": 1.5}, "real_p0", "got 1.5"),
        ({"sampler": "real", "real_p0": "0.9"}, "real_p0", "got str '0.9'"),
        ({"sampler": "real", "real_decay_temperature": 0}, "real_decay_temperature", "got 0"),
        ({"sampler": "real", "real_decay_temperature": -2.0}, "real_decay_temperature", "got -2"),
        ({"sampler": "edt+real", "real_decay_temperature": float("nan")}, "real_decay_temperature", "got nan"),
        ({"sampler": "real", "real_thf": "/tmp/x"}, "real_thf", None),  # a server setting, not per request
        ({"sampler": "real", "real_retokenize": True}, "real_retokenize", None),
    ],
)
def test_bad_values_name_the_parameter(args, name, shown):
    """The parameter is the message's subject (not merely listed among the known keys), and a
    bad value is shown as sent."""
    subject = rf"^(unknown parameter {re.escape(repr(name))}|{re.escape(name)} (must|is a server setting))"
    with pytest.raises(ValueError, match=subject) as excinfo:
        parse_sampler_args(args)
    if shown is not None:
        assert str(excinfo.value).endswith(shown), str(excinfo.value)


def test_a_sampler_alone_gets_its_methods_defaults_and_composes_in_order():
    req = parse_sampler_args({"sampler": "edt+real", "real_p0": 0.9})
    assert req.methods == ("edt", "real") and req.edt == EDTConfig() and req.real == REALConfig(p0=0.9)
    assert parse_sampler_args({"sampler": "real"}).edt is None


def test_every_sampler_name_runs_its_methods():
    for name in SAMPLERS:
        req = parse_sampler_args({"sampler": name})
        assert req.sampler == name
        assert req.methods == (() if name == "none" else tuple(name.split("+")))
        for method in ("edt", "real", "sled", "dola"):
            assert (getattr(req, method) is not None) == (method in req.methods), (name, method)


# ----------------------------------------------------------------------------- identities

V = 1031


def hard_rows() -> torch.Tensor:
    """Rows where an identity could fail to be one: ordinary, fully peaked (entropy 0), masked
    entries, a long tail whose float32 mass rounds away (a nucleus summing to 1.0 before its last
    tokens), exact ties, huge and tiny magnitudes, a row of -inf but one, values bf16 rounded."""
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(V, generator=gen) * 3]
    peaked = torch.full((V,), -50.0)
    peaked[7] = 50.0
    rows.append(peaked)
    masked = torch.randn(V, generator=gen)
    masked[::3] = float("-inf")
    rows.append(masked)
    tail = torch.full((V,), -30.0)
    tail[0] = 0.0
    rows.append(tail)
    rows.append(torch.randint(0, 3, (V,), generator=gen).float())
    rows.append(torch.randn(V, generator=gen) * 1e4)
    rows.append(torch.randn(V, generator=gen) * 1e-6)
    one = torch.full((V,), float("-inf"))
    one[V - 1] = 1.0
    rows.append(one)
    rows.append((torch.randn(V, generator=gen) * 3).bfloat16().float())
    return torch.stack(rows)


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_edt_at_t0_1_theta_0_leaves_logits_bit_identical(backend):
    x = hard_rows()
    for n in (0.05, 0.8, 0.95):
        out, temperature = ops.apply_edt(x.clone(), 1.0, n, 0.0, MIN_SCALE, backend=backend)
        assert torch.equal(temperature, torch.ones(x.shape[0])), (n, temperature)
        assert torch.equal(out, x), f"n={n}: rows {sorted(set((out != x).nonzero()[:, 0].tolist()))} changed"


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_top_p_1_keeps_every_token(backend):
    x = hard_rows()
    assert torch.equal(ops.top_p_mask(x.clone(), 1.0, backend=backend), x)


def test_real_at_top_p_decay_is_top_p_p0_whatever_the_thf_says():
    """real_decay_temperature 1e9 stands for infinity (plain top-p(p0), no THF forward): the
    threshold formula gives exactly p0 there for every residual entropy a THF of a vocabulary up
    to 2**20 tokens can forecast (|d| <= ln V), so skipping the forward changes nothing."""
    from real_vllm.thf.curves import threshold

    d = torch.linspace(-math.log(2**20), math.log(2**20), 4097)
    for p0 in (0.3, 0.9, 1.0):
        p0_32 = torch.tensor(p0, dtype=torch.float32)
        assert torch.equal(threshold(d, p0_32, torch.tensor(1e9)), p0_32.expand_as(d)), p0


def test_rows_of_other_requests_come_out_bit_identical_beside_edt_and_real_rows():
    """Through the processor (V1 batch): EDT and REAL run over the whole batch, the plain
    request's rows and a REAL request at p0 = 1 keeping every one of their logits."""
    config = SimpleNamespace(additional_config={}, scheduler_config=SimpleNamespace(max_num_seqs=32),
                             model_config=SimpleNamespace(tokenizer=None))
    proc = RealVllmLogitsProcessor(config, torch.device("cpu"), False)
    x = hard_rows()
    plain, real_all = SamplingParams(), SamplingParams(extra_args={"sampler": "real", "real_p0": 1.0,
                                                                   "real_decay_temperature": 1e9})
    methods = [SamplingParams(extra_args={"sampler": "edt+real", "edt_t0": 0.7, "real_p0": 0.5,
                                          "real_decay_temperature": 1e9}),
               SamplingParams(extra_args={"sampler": "edt", "edt_theta": 2.0})]
    # Every hard row as a plain request's, as a p0 = 1 REAL request's, and as an EDT/REAL one's.
    batch = [plain] * len(x) + [real_all] * len(x) + methods * (len(x) // 2) + methods[:len(x) % 2]
    proc.update_state(BatchUpdate(len(batch), removed=[], added=[(i, p, [1, 2], []) for i, p in enumerate(batch)],
                                  moved=[]))
    logits = x.repeat(3, 1)
    out = proc.apply(logits.clone())
    for i in range(2 * len(x)):
        assert torch.equal(out[i], logits[i]), f"row {i} ({'plain' if i < len(x) else 'REAL p0=1'}) was touched"
    assert not torch.equal(out[2 * len(x):], logits[2 * len(x):]), "EDT/REAL rows ran nothing: the test is void"
