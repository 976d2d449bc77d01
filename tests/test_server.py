"""A real `real-vllm serve MODEL --sampler edt` on 127.0.0.1, driven with the openai client."""

import json
import math
import urllib.error
import urllib.request

import openai
import pytest

from real_vllm.server import LocalServer

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with LocalServer(tiny_model_dir, ["--sampler", "edt", "--max-num-seqs", "16"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def complete(client, xargs=None, temperature=1.0, seed=0, prompt="The function", max_tokens=16):
    reply = client.completions.create(
        model=client.models.list().data[0].id,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        extra_body={"vllm_xargs": xargs} if xargs is not None else {},
    )
    return reply.choices[0].text


def test_sampler_flag_sets_the_server_default(client):
    seeds = range(5)
    default = [complete(client, seed=s) for s in seeds]
    assert default == [complete(client, {"sampler": "edt"}, seed=s) for s in seeds]
    opted_out = [complete(client, {"sampler": "none"}, seed=s) for s in seeds]
    assert opted_out != default, "the server default changed nothing"


def test_edt_theta_zero_equals_temperature_over_http(client):
    for seed in range(4):
        edt = complete(client, {"sampler": "edt", "edt_t0": 0.7, "edt_theta": 0.0}, seed=seed, max_tokens=24)
        plain = complete(client, {"sampler": "none"}, temperature=0.7, seed=seed, max_tokens=24)
        assert edt == plain


BAD_XARGS = [
    ({"sampler": "edtt"}, "sampler"),
    ({"sampler": 5}, "sampler"),
    ({"sampler": "edt", "edt_t0": "hot"}, "edt_t0"),
    ({"sampler": "edt", "edt_t0": math.nan}, "edt_t0"),
    ({"sampler": "edt", "edt_t0": 0.0}, "edt_t0"),
    ({"sampler": "edt", "edt_t0": -1.0}, "edt_t0"),
    ({"sampler": "edt", "edt_n": 1.0}, "edt_n"),
    ({"sampler": "edt", "edt_n": -0.2}, "edt_n"),
    ({"sampler": "edt", "edt_theta": -0.5}, "edt_theta"),
    ({"sampler": "edt", "edt_theta": [1, 2]}, "edt_theta"),
    ({"edt_tzero": 0.7}, "edt_tzero"),
    # SLED/DoLa need a server that computes early layers (--sampler sled / dola)
    ({"sampler": "sled"}, "sled"),
    ({"sampler": "dola+edt"}, "dola+edt"),
]


def post_raw(server, client, xargs) -> tuple[int, str]:
    """POST a completion whose JSON may hold NaN (the openai client refuses to send it)."""
    body = {"model": client.models.list().data[0].id, "prompt": "The", "max_tokens": 4, "vllm_xargs": xargs}
    request = urllib.request.Request(
        f"{server.base_url}/completions",
        data=json.dumps(body).encode(),  # allow_nan: NaN goes out as the literal NaN
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("xargs, name", BAD_XARGS, ids=[n for _, n in BAD_XARGS])
def test_bad_parameters_give_400_naming_them_and_the_server_keeps_serving(client, server, xargs, name):
    before = complete(client, {"edt_t0": 0.9}, seed=11)
    status, body = post_raw(server, client, xargs)
    assert status == 400, body
    assert name in json.loads(body)["error"]["message"]
    assert server.alive()
    assert complete(client, {"edt_t0": 0.9}, seed=11) == before


# ----------------------------------------------------------------------------- fuzzing

HOSTILE_VALUES = [
    None, True, False, 0, -1, 7, 1e308, -1e308, 1e-320, math.nan, math.inf, -math.inf,
    "", "0.7", "edt", "x" * 20000, [1, 2], [], {"a": 1}, 0.5, 2, 1e9, -0.0,
]
HOSTILE_KEYS = [
    "sampler", "edt_t0", "edt_n", "edt_theta", "real_p0", "real_decay_temperature",
    "edt_bogus", "real_thf", "real_", "unknown_key", "", "k" * 300,
    "sled_alpha", "sled_k", "sled_lower_bound", "dola_relative_top", "sled_layers", "dola_early_norm",
]
HOSTILE_SAMPLERS = [
    "none", "edt", "real", "edt+real", "sled", "dola", "sled+edt+real", "EDT", " edt", "edt ", "none\x00", "é"
]


def hostile_xargs(rng):
    xargs = {}
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(HOSTILE_KEYS)
        if key == "sampler" and rng.random() < 0.6:
            xargs[key] = rng.choice(HOSTILE_SAMPLERS)
        else:
            xargs[key] = rng.choice(HOSTILE_VALUES)
    return xargs


def test_fuzzed_xargs_never_give_500_nor_disturb_other_requests(client, server):
    fuzz(client, server, {"sampler": "edt", "edt_t0": 0.8})


def fuzz(client, server, good_xargs):
    """Random hostile vllm_xargs: every answer is 200 or a 400 with a message; the engine
    stays up; a well-formed seeded request gives the same tokens after each bad one as before
    any. Bounded for make test (REAL_VLLM_FUZZ_REQUESTS, default 100; e.g. 3000 for a long run)."""
    import os
    import random

    seed = int(os.environ.get("REAL_VLLM_TEST_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    reference_text = complete(client, good_xargs, seed=3, max_tokens=8)
    for i in range(int(os.environ.get("REAL_VLLM_FUZZ_REQUESTS", 100))):
        xargs = hostile_xargs(rng)
        status, body = post_raw(server, client, xargs)
        assert status in (200, 400), f"seed {seed}, request {i}: {xargs!r} -> {status} {body[:300]}"
        if status == 400:
            assert json.loads(body)["error"]["message"], f"seed {seed}: a 400 without a message"
        assert server.alive(), f"seed {seed}: the server died on {xargs!r}"
        assert complete(client, good_xargs, seed=3, max_tokens=8) == reference_text
