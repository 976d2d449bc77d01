"""REAL through vLLM's offline engine with a tiny THF (additional_config real_thf)."""

import pytest
from vllm import SamplingParams

from tests.conftest import close_llm, make_llm
from tests.thf_fixtures import build_tiny_thf

pytestmark = pytest.mark.engine

PROMPTS = ["The module", "A function that returns", "Return the list of", "If the value is"]


@pytest.fixture(scope="module")
def llm(tiny_model_dir, tmp_path_factory):
    thf = build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)
    llm = make_llm(tiny_model_dir, additional_config={"real_thf": str(thf)})
    yield llm
    close_llm(llm)


def ids(llm, params):
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def sp(seed, top_p=1.0, **extra):
    return SamplingParams(temperature=1.0, top_p=top_p, seed=seed, max_tokens=32, ignore_eos=True, extra_args=extra or None)


def test_real_with_infinite_decay_is_top_p(llm):
    seeds = range(20, 24)
    top_p = ids(llm, [sp(s, top_p=0.9) for s in seeds])
    as_real = ids(llm, [sp(s, sampler="real", real_p0=0.9, real_decay_temperature=1e9) for s in seeds])
    assert as_real == top_p
    # The comparison can fail: a finite decay shrinks the nucleus and changes tokens.
    adaptive = ids(llm, [sp(s, sampler="real", real_p0=0.9, real_decay_temperature=0.2) for s in seeds])
    assert adaptive != top_p


def test_real_composes_with_edt_and_plain_rows(llm):
    seeds = [5, 6, 7, 8]
    plain = ids(llm, [sp(s) for s in seeds])
    mixed = ids(llm, [sp(5), sp(6, sampler="edt+real", edt_theta=2.0), sp(7), sp(8, sampler="real")])
    assert mixed[0] == plain[0] and mixed[2] == plain[2]
    assert mixed[1] != plain[1] or mixed[3] != plain[3]


def test_seeded_real_request_gives_the_same_tokens_alone_and_in_a_batch(llm):
    target = sp(77, sampler="real", real_p0=0.9, real_decay_temperature=0.5)
    alone = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS[:1], [target], use_tqdm=False)]
    batched = ids(llm, [target, sp(1), sp(2, sampler="edt"), sp(3, sampler="real")])
    assert batched[0] == alone[0]


@pytest.mark.parametrize("shipped", ["smollm2", "smollm2-depth"])
def test_cross_tokenizer_real_serves_the_tiny_model_with_a_shipped_thf(tiny_model_dir, shipped):
    """REAL through vLLM with a shipped THF, named as `--real-thf NAME` does, of another tokenizer
    (SmolLM2's) and real_retokenize: it serves, its nucleus changes tokens, and a seeded request
    is the same alone and batched."""
    llm = make_llm(tiny_model_dir, additional_config={"real_thf": shipped, "real_retokenize": True})
    try:
        target = sp(77, sampler="real", real_p0=0.9, real_decay_temperature=0.3)
        alone = ids(llm, [target] * 4)
        batched = ids(llm, [target, sp(1), sp(2, sampler="edt"), sp(3, sampler="real")])
        assert batched[0] == alone[0]
        assert alone != ids(llm, [sp(77)] * 4)
    finally:
        close_llm(llm)
