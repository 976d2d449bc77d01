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
