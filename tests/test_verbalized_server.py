"""Verbalized Sampling through a real `real-vllm serve` (the tiny random Llama) on 127.0.0.1.

The tiny model writes noise, which is the point: structured outputs alone have to make its
answers parse. Its texts are kept short (max_text_chars) so that each answer takes a few dozen
decoding steps on a CPU.
"""

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from real_vllm import verbalized as vs
from real_vllm.server import LocalServer

pytestmark = pytest.mark.engine

SHORT = dict(max_text_chars=16, max_reasoning_chars=24)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with LocalServer(tiny_model_dir, ["--max-num-seqs", "16"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def many(client, model, seeds, **kwargs):
    """Concurrent requests, so the server batches them."""
    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(lambda s: vs.generate_openai(client, model, "Tell me a joke.", seed=s, **{**SHORT, **kwargs}), seeds))


def assert_clean(dist: vs.Distribution, k: int, *, reasoning: bool = False) -> None:
    """The answer came back whole, in the enforced format, with k distinct items summing to 1."""
    assert dist.meta["structured"] == "vllm" and dist.meta["refused"] == []
    assert set(dist.meta["finish_reasons"]) == {"stop"}
    assert dist.repairs == () or all("duplicate" in r or f"asked for {k}" in r for r in dist.repairs), dist.repairs
    assert len(dist) == k, dist.repairs
    assert math.isclose(sum(dist.probabilities), 1.0, abs_tol=1e-12)
    assert all(p >= 0 for p in dist.probabilities)
    for raw in ([dist.raw] if dist.meta["method"] != "multi" else json.loads(dist.raw)):
        answer = json.loads(raw)
        schema = vs.answer_schema(len(answer["responses"]), reasoning=reasoning, **SHORT)
        jsonschema.validate(answer, schema)
    if reasoning:
        assert isinstance(dist.reasoning, str) and dist.reasoning


def test_every_answer_parses_with_k_items_summing_to_one(client, model):
    dists = many(client, model, range(8), k=4)
    for dist in dists:
        assert_clean(dist, 4)
    assert len({tuple(d.texts) for d in dists}) == len(dists), "seeds gave identical answers"


def test_cot_and_multi_answers_parse(client, model):
    cot = many(client, model, range(2), method="cot", k=3)
    multi = many(client, model, range(2), method="multi", k=3, m=2)
    for dist in cot:
        assert_clean(dist, 3, reasoning=True)
    for dist in multi:
        assert_clean(dist, 3)
        assert dist.meta["finish_reasons"] == ["stop", "stop"] and len(json.loads(dist.raw)) == 2


def test_a_seed_reproduces_the_answer_and_the_draw(client, model):
    a, b = many(client, model, [5, 5], k=3)
    assert a.raw == b.raw and a.sample(5) == b.sample(5)


def test_vs_over_edt_decoding(client, model):
    """sampler_args reach the sampler as vllm_xargs: EDT changes the answers, which still parse."""
    seeds = range(4)
    plain = many(client, model, seeds, k=3, temperature=1.0)
    edt = many(client, model, seeds, k=3, temperature=1.0, sampler_args={"sampler": "edt", "edt_t0": 0.5})
    for dist in edt:
        assert_clean(dist, 3)
        assert dist.meta["sampler_args"] == {"sampler": "edt", "edt_t0": 0.5}
    assert [d.raw for d in edt] != [d.raw for d in plain]


def test_a_bad_sampler_argument_is_reported_not_swallowed(client, model):
    with pytest.raises(vs.VSServerError, match="edt_t0"):
        vs.generate_openai(client, model, "hi", k=2, sampler_args={"sampler": "edt", "edt_t0": -1.0}, **SHORT)


def test_the_cli_prints_k_candidates_and_the_draw(server, capsys):
    from real_vllm.verbalized.cli import main

    main(["Write a haiku.", "-k", "3", "--seed", "2", "--base-url", server.base_url, "--json",
          "--max-text-chars", "16"])
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 3
    assert math.isclose(sum(it["probability"] for it in out["items"]), 1.0, abs_tol=1e-12)
    assert out["draw"]["text"] == out["items"][out["draw"]["index"]]["text"]
    assert out["meta"]["structured"] == "vllm"

    main(["Write a haiku.", "-k", "3", "--seed", "2", "--base-url", server.base_url, "--max-text-chars", "16"])
    table = capsys.readouterr().out
    assert re.search(r"drawn \(seed 2, weight\): #\d, p = [01]\.\d{3}", table)
    assert "3 candidates, probabilities sum to 1.000000" in table
