"""The same seed gives the same tokens for every sampler: across engine restarts and across
batch compositions (alone, in a batch, in another order)."""

import pytest
from vllm import SamplingParams

from tests.conftest import close_llm, make_llm
from tests.thf_fixtures import build_tiny_thf

pytestmark = pytest.mark.engine

SAMPLERS = ["none", "edt", "real", "edt+real", "sled", "sled+edt", "dola", "dola+real", "sled+edt+real"]
PROMPT = "The value of"


def requests():
    return [SamplingParams(temperature=1.0, seed=100 + i, max_tokens=20, ignore_eos=True, extra_args={"sampler": s})
            for i, s in enumerate(SAMPLERS)]


def ids(llm, params):
    return [list(o.outputs[0].token_ids) for o in llm.generate([PROMPT] * len(params), params, use_tqdm=False)]


def engine_run(model_dir, thf):
    llm = make_llm(model_dir, additional_config={"sampler": "sled", "real_thf": str(thf)}, enable_chunked_prefill=False)
    params = requests()
    together = ids(llm, params)
    reversed_order = ids(llm, params[::-1])[::-1]
    alone = [ids(llm, [p])[0] for p in params]
    close_llm(llm)
    return together, reversed_order, alone


def test_seeded_tokens_survive_restarts_and_batch_composition(tiny_model_dir, tmp_path_factory):
    thf = build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)
    first = engine_run(tiny_model_dir, thf)
    together, reversed_order, alone = first
    assert together == reversed_order == alone
    assert len({tuple(t) for t in together}) == len(SAMPLERS), "samplers should not coincide"
    assert engine_run(tiny_model_dir, thf) == first  # a fresh engine
