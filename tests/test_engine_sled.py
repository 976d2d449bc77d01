"""SLED and DoLa served through LLM() on the tiny model, against the Hugging Face oracle
(tests/hf_early.py, written from docs/algorithms.md §4.1 and §5), plus mixed batches and composition."""

import pytest
import torch
from vllm import SamplingParams

from tests.conftest import close_llm, make_llm
from tests.hf_early import greedy

pytestmark = pytest.mark.engine

PROMPTS = ["The value of", "Return a new", "If the file", "This module provides"]
NEW_TOKENS = 32
# The tiny model has 4 layers: DoLa chooses among all of them (index 0 = embeddings).
DOLA_LAYERS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    llm = make_llm(tiny_model_dir, additional_config={"sampler": "sled", "dola_layers": DOLA_LAYERS})
    yield llm
    close_llm(llm)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def generate(llm, prompts, extra=None, temperature=0.0, seed=None, n=NEW_TOKENS, **kw):
    params = [
        SamplingParams(temperature=temperature, seed=seed, max_tokens=n, ignore_eos=True, extra_args=e, **kw)
        for e in (extra if isinstance(extra, list) else [extra] * len(prompts))
    ]
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("alpha,k", [(2.0, 10), (0.7, 4)])
def test_greedy_sled_equals_hugging_face_oracle(llm, hf, alpha, k):
    model, tokenizer = hf
    extra = {"sampler": "sled", "sled_alpha": alpha, "sled_k": k}
    served = generate(llm, PROMPTS, extra)
    for prompt, tokens in zip(PROMPTS, served):
        assert tokens == greedy(model, tokenizer(prompt)["input_ids"], NEW_TOKENS, "sled", alpha=alpha, k=k)


@pytest.mark.parametrize("divergence", [None, "jsd", "authors"])
def test_greedy_dola_equals_hugging_face_oracle(llm, hf, divergence):
    # None: the default, the authors' divergence (transformers 4.46's), un-normed early layers
    model, tokenizer = hf
    extra = {"sampler": "dola", **({"dola_divergence": divergence} if divergence else {})}
    served = generate(llm, PROMPTS, extra)
    for prompt, tokens in zip(PROMPTS, served):
        assert tokens == greedy(model, tokenizer(prompt)["input_ids"], NEW_TOKENS, "dola", layers=DOLA_LAYERS,
                                divergence=divergence or "authors")


def test_dola_divergences_differ_and_mix_in_one_batch(llm):
    kinds = [{"sampler": "dola"}, {"sampler": "dola", "dola_divergence": "jsd"}] * 2
    together = generate(llm, PROMPTS, kinds)
    assert together == [generate(llm, [p], [e])[0] for p, e in zip(PROMPTS, kinds)]
    assert generate(llm, PROMPTS, kinds[0]) != generate(llm, PROMPTS, kinds[1])


def test_plain_requests_on_a_sled_server_get_the_models_own_logits(llm, hf):
    model, tokenizer = hf
    served = generate(llm, PROMPTS, {"sampler": "none"})
    for prompt, tokens in zip(PROMPTS, served):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        expected = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
        assert tokens == expected[0, ids.shape[1]:].tolist()
    assert generate(llm, PROMPTS) != served, "the server default (sled) changed nothing"


def test_alpha_zero_and_k_vocab_is_plain_decoding(llm):
    identity = {"sampler": "sled", "sled_alpha": 0.0, "sled_k": 1024}
    assert generate(llm, PROMPTS, identity) == generate(llm, PROMPTS, {"sampler": "none"})
    for seed in range(3):
        assert generate(llm, PROMPTS, identity, temperature=1.0, seed=seed) == generate(
            llm, PROMPTS, {"sampler": "none"}, temperature=1.0, seed=seed
        )


def test_mixed_batch_rows_get_their_own_method(llm):
    kinds = [{"sampler": "sled"}, {"sampler": "none"}, {"sampler": "dola"}, {"sampler": "sled", "sled_k": 3}]
    together = generate(llm, PROMPTS, kinds)
    alone = [generate(llm, [p], [e])[0] for p, e in zip(PROMPTS, kinds)]
    assert together == alone


def test_sled_composes_with_edt_and_vllm_sampling(llm):
    # EDT with theta = 0 is plain temperature t0, applied after the evolution.
    for seed in range(3):
        composed = generate(llm, PROMPTS, {"sampler": "sled+edt", "edt_t0": 0.7, "edt_theta": 0.0}, temperature=1.0, seed=seed)
        assert composed == generate(llm, PROMPTS, {"sampler": "sled"}, temperature=0.7, seed=seed)
    # vLLM's own top-p, top-k and penalties run on the evolved logits without trouble, and
    # a seed reproduces.
    once = generate(llm, PROMPTS, {"sampler": "sled"}, temperature=0.9, seed=7, top_p=0.9, top_k=5, repetition_penalty=1.05)
    assert once == generate(llm, PROMPTS, {"sampler": "sled"}, temperature=0.9, seed=7, top_p=0.9, top_k=5, repetition_penalty=1.05)


@pytest.mark.parametrize(
    "extra,name",
    [
        ({"sampler": "sled", "sled_k": 0}, "sled_k"),
        ({"sampler": "sled", "sled_k": 2.5}, "sled_k"),
        ({"sampler": "sled", "sled_alpha": -1}, "sled_alpha"),
        ({"sampler": "sled", "sled_alpha": "big"}, "sled_alpha"),
        ({"sampler": "sled", "sled_lower_bound": float("nan")}, "sled_lower_bound"),
        ({"sampler": "dola", "dola_relative_top": 0}, "dola_relative_top"),
        ({"sampler": "dola", "dola_divergence": "kl"}, "dola_divergence"),
        ({"sampler": "sled", "sled_layers": "all"}, "sled_layers"),
    ],
)
def test_bad_parameters_are_refused_by_name(llm, extra, name):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises((ValueError, VLLMValidationError), match=name):
        generate(llm, PROMPTS[:1], extra, n=2)
    assert generate(llm, PROMPTS[:1], {"sampler": "sled"}, n=4)  # the engine still serves
