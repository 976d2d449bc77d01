"""EDT through vLLM's offline engine (V1 runner on CPU), with the tiny random Llama.

The processor is not passed to LLM(): installing real_vllm registers it through the
``vllm.logits_processors`` entry point, as a user would get it.
"""

import pytest
from vllm import SamplingParams

from tests.conftest import close_llm, make_llm

pytestmark = pytest.mark.engine

PROMPTS = ["The module", "A function that returns", "Return the list of", "If the value is"]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    llm = make_llm(tiny_model_dir)
    yield llm
    close_llm(llm)


def token_ids(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def plain(temperature, seed, max_tokens=32):
    return SamplingParams(temperature=temperature, seed=seed, max_tokens=max_tokens, ignore_eos=True)


def edt(t0, theta, seed, max_tokens=32, **kw):
    extra = {"sampler": "edt", "edt_t0": t0, "edt_theta": theta, **kw}
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)


def test_edt_theta_zero_is_plain_temperature(llm):
    seeds = range(100, 100 + len(PROMPTS))
    want = token_ids(llm.generate(PROMPTS, [plain(0.7, s) for s in seeds], use_tqdm=False))
    got = token_ids(llm.generate(PROMPTS, [edt(0.7, 0.0, s) for s in seeds], use_tqdm=False))
    assert got == want
    # The comparison can fail: another t0 gives other tokens.
    other = token_ids(llm.generate(PROMPTS, [edt(1.3, 0.0, s) for s in seeds], use_tqdm=False))
    assert other != want


def test_mixed_batch_changes_only_the_edt_rows(llm):
    seeds = [7, 8, 9, 10]
    all_plain = token_ids(llm.generate(PROMPTS, [plain(1.0, s) for s in seeds], use_tqdm=False))
    mixed_params = [plain(1.0, 7), edt(1.0, 3.0, 8), plain(1.0, 9), edt(1.0, 3.0, 10)]
    mixed = token_ids(llm.generate(PROMPTS, mixed_params, use_tqdm=False))
    assert mixed[0] == all_plain[0] and mixed[2] == all_plain[2]
    assert mixed[1] != all_plain[1] or mixed[3] != all_plain[3], "EDT changed nothing"


def run_schedule(llm, schedule):
    """Drive the engine step by step; schedule: {step: [(request_id, prompt, params)]}."""
    engine = llm.llm_engine
    outputs, step = {}, 0
    while step <= max(schedule) or engine.has_unfinished_requests():
        for request_id, prompt, params in schedule.get(step, []):
            engine.add_request(request_id, prompt, params)
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        step += 1
    return outputs


def test_requests_joining_and_leaving_keep_their_own_parameters(llm):
    # The same schedule twice: once with EDT(theta = 0, t0), once with plain temperature t0.
    # Requests leave at different steps (max_tokens) and join mid-batch, so the V1 persistent
    # batch removes, adds and moves rows; any parameter mix-up changes some request's tokens.
    plan = {  # step: [(id, prompt, t0, seed, max_tokens)]
        0: [("a", PROMPTS[0], 0.5, 1, 6), ("b", PROMPTS[1], None, 2, 40), ("c", PROMPTS[2], 1.6, 3, 12)],
        3: [("d", PROMPTS[3], 0.8, 4, 20)],
        9: [("e", PROMPTS[0], 1.2, 5, 10), ("f", PROMPTS[1], 0.3, 6, 8)],
    }

    def schedule(use_edt):
        out = {}
        for step, reqs in plan.items():
            out[step] = [
                (rid, prompt, edt(t0, 0.0, seed, n) if (use_edt and t0) else plain(t0 or 1.0, seed, n))
                for rid, prompt, t0, seed, n in reqs
            ]
        return out

    with_edt = run_schedule(llm, schedule(use_edt=True))
    with_temperature = run_schedule(llm, schedule(use_edt=False))
    assert set(with_edt) == set("abcdef")
    assert with_edt == with_temperature


@pytest.mark.parametrize("sampler", ["none", "edt"])
def test_seeded_request_gives_the_same_tokens_alone_and_in_any_batch(llm, sampler):
    target = SamplingParams(temperature=1.0, seed=77, max_tokens=24, ignore_eos=True, extra_args={"sampler": sampler, "edt_theta": 2.0})
    alone = token_ids(llm.generate(PROMPTS[:1], [target], use_tqdm=False))[0]
    neighbours = [plain(1.0, 5, 40), edt(0.6, 1.0, 6, 12), plain(0.3, 7, 3)]
    batched = token_ids(llm.generate(PROMPTS, [target, *neighbours], use_tqdm=False))[0]
    assert batched == alone
