"""The server-wide default from additional_config, through LLM() (one engine)."""

import pytest
from vllm import SamplingParams

from tests.conftest import close_llm, make_llm

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    llm = make_llm(tiny_model_dir, additional_config={"sampler": "edt", "edt_t0": 0.7, "edt_theta": 0.0})
    yield llm
    close_llm(llm)


def ids(llm, params):
    return [list(o.outputs[0].token_ids) for o in llm.generate(["The value", "Return a"], params, use_tqdm=False)]


def test_default_applies_and_request_can_opt_out(llm):
    def sp(temperature, seed, extra=None):
        return SamplingParams(temperature=temperature, seed=seed, max_tokens=24, ignore_eos=True, extra_args=extra)

    by_default = ids(llm, [sp(1.0, 1), sp(1.0, 2)])
    # Server default EDT(t0 = 0.7, theta = 0) is plain temperature 0.7 ...
    assert by_default == ids(llm, [sp(0.7, 1, {"sampler": "none"}), sp(0.7, 2, {"sampler": "none"})])
    # ... and a request's own values override it.
    assert ids(llm, [sp(1.0, 1, {"edt_t0": 1.0}), sp(1.0, 2, {"edt_t0": 1.0})]) == ids(
        llm, [sp(1.0, 1, {"sampler": "none"}), sp(1.0, 2, {"sampler": "none"})]
    )
