"""SLED and DoLa on the embedded default model (SmolLM2-135M-Instruct: 30 layers, tied
embeddings), greedy, against the Hugging Face oracle of tests/hf_early.py."""

import pytest
import torch
from vllm import SamplingParams

from real_vllm.methods.dola import candidate_layers
from tests.conftest import close_llm, make_llm
from tests.hf_early import greedy

pytestmark = pytest.mark.engine

PROMPTS = [
    "The capital of France is",
    "Albert Einstein was born in",
    "The largest planet in the solar system is",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def model_dir():
    from real_vllm.assets import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="module")
def served(model_dir):
    llm = make_llm(model_dir, additional_config={"sampler": "sled"}, max_model_len=256)
    params = lambda extra: SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, extra_args=extra)  # noqa: E731
    out = {
        name: [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params(extra), use_tqdm=False)]
        for name, extra in (("sled", None), ("dola", {"sampler": "dola"}), ("none", {"sampler": "none"}))
    }
    close_llm(llm)
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def test_greedy_sled_matches_the_oracle_on_the_default_model(served, hf):
    model, tokenizer = hf
    for prompt, tokens in zip(PROMPTS, served["sled"]):
        assert tokens == greedy(model, tokenizer(prompt)["input_ids"], NEW_TOKENS, "sled", alpha=2.0, k=10)
    assert served["sled"] != served["none"]


def test_greedy_dola_matches_the_oracle_on_the_default_model(served, hf):
    model, tokenizer = hf
    layers = candidate_layers(model.config.num_hidden_layers, "high", model.config.tie_word_embeddings)
    assert layers == list(range(15, 30, 2))
    for prompt, tokens in zip(PROMPTS, served["dola"]):
        assert tokens == greedy(model, tokenizer(prompt)["input_ids"], NEW_TOKENS, "dola", layers=layers)
