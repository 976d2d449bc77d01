"""`real-vllm serve MODEL --sampler sled` on 127.0.0.1: SLED/DoLa over the OpenAI API, bad
parameters as HTTP 400 naming them, hostile xargs never a 500."""

import json

import openai
import pytest

from real_vllm.server import LocalServer
from tests.test_server import complete, fuzz, post_raw

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with LocalServer(tiny_model_dir, ["--sampler", "sled", "--sled-layers", "every:2", "--dola-layers", "0,1,2,3", "--max-num-seqs", "16"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_sled_server_serves_every_sampler(client):
    greedy = {name: complete(client, {"sampler": name}, temperature=0.0, max_tokens=24)
              for name in ("sled", "dola", "none", "sled+edt", "dola+edt")}
    assert complete(client, None, temperature=0.0, max_tokens=24) == greedy["sled"]  # the server default
    assert greedy["sled"] != greedy["none"] and greedy["dola"] != greedy["none"]
    # greedy: EDT is argmax-invariant, so it changes nothing after the evolution
    assert greedy["sled+edt"] == greedy["sled"] and greedy["dola+edt"] == greedy["dola"]
    identity = complete(client, {"sampler": "sled", "sled_alpha": 0, "sled_k": 1024}, seed=4, max_tokens=24)
    assert identity == complete(client, {"sampler": "none"}, seed=4, max_tokens=24)


BAD_XARGS = [
    ({"sampler": "sled", "sled_k": 0}, "sled_k"),
    ({"sampler": "sled", "sled_k": 1.5}, "sled_k"),
    ({"sampler": "sled", "sled_k": "ten"}, "sled_k"),
    ({"sampler": "sled", "sled_alpha": -0.1}, "sled_alpha"),
    ({"sampler": "sled", "sled_alpha": float("inf")}, "sled_alpha"),
    ({"sampler": "sled", "sled_lower_bound": float("nan")}, "sled_lower_bound"),
    ({"sampler": "dola", "dola_relative_top": 1.5}, "dola_relative_top"),
    ({"sampler": "sled", "sled_layers": [0]}, "sled_layers"),
    ({"sampler": "sled", "sled_kk": 3}, "sled_kk"),
    ({"sampler": "slde"}, "sampler"),
]


@pytest.mark.parametrize("xargs, name", BAD_XARGS, ids=[n for _, n in BAD_XARGS])
def test_bad_parameters_give_400_naming_them(client, server, xargs, name):
    before = complete(client, {"sampler": "sled"}, seed=11)
    status, body = post_raw(server, client, xargs)
    assert status == 400, body
    assert name in json.loads(body)["error"]["message"]
    assert server.alive()
    assert complete(client, {"sampler": "sled"}, seed=11) == before


def test_fuzzed_xargs_on_a_sled_server(client, server):
    fuzz(client, server, {"sampler": "sled", "sled_k": 5})
