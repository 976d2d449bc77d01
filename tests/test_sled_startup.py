"""What a SLED/DoLa server refuses at start-up, with a message that says what to do, and the
layer settings. Engine configs are built without starting an engine."""

import re

import pytest
from vllm.engine.arg_utils import EngineArgs

import real_vllm.integration.plugin as plugin
from real_vllm.integration.early_models import register_architecture
from real_vllm.integration.startup import StartupError
from real_vllm.methods.dola import candidate_layers
from real_vllm.methods.early_layers import EarlyLayerSettings

plugin.register()


def config(model_dir, **kwargs):
    kwargs.setdefault("dtype", "float32")
    return EngineArgs(model=str(model_dir), **kwargs).create_engine_config()


def test_sled_server_wraps_the_model_and_resolves_layers(tiny_model_dir):
    hf = config(tiny_model_dir, additional_config={"sampler": "sled", "sled_layers": "every:2"}).model_config.hf_config
    assert hf.architectures == ["RealVllmEarlyLayersLlamaForCausalLM"]
    assert hf.real_vllm_sled_layers == [0, 2]
    assert hf.real_vllm_dola_layers == [2]  # 'high' of 4 untied layers: range(2, 4, 2)
    assert hf.real_vllm_tapped_layers == [0, 2]
    assert (hf.real_vllm_sled_early_norm, hf.real_vllm_dola_early_norm) == (False, False)
    plain = config(tiny_model_dir).model_config.hf_config
    assert plain.architectures == ["LlamaForCausalLM"]


def raises_exactly(error: type[Exception], message: str):
    """pytest.raises for exactly ``error`` (not a subclass or a wrapper) with exactly ``message``."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


def check_type(excinfo, error: type[Exception]) -> None:
    assert excinfo.type is error, f"{excinfo.type.__name__}, not {error.__name__}: {excinfo.value}"


LAYERS_FORMS = "must be 'all', 'every:K' or a list of layer indices like '0,4,8'"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}),
         "real_vllm: --sampler sled cannot run with speculative decoding (the early-layer model wrapper is not "
         "supported with a speculator); drop one of them"),
        (dict(pipeline_parallel_size=2),
         "real_vllm: --sampler sled needs every early layer on the last pipeline stage; pipeline parallelism is "
         "not supported with it (use tensor parallelism)"),
        (dict(enable_batch_sharded_sampling=True),
         "real_vllm: --sampler sled does not support batch-sharded sampling (--enable-batch-sharded-sampling); "
         "leave it off"),
        (dict(additional_config={"sampler": "sled", "sled_layers": "every:0"}),
         f"real_vllm: sled_layers {LAYERS_FORMS}; got 'every:0'"),
        # checked when vLLM's ModelConfig calls the hf_overrides: ours all the same, not pydantic's
        (dict(additional_config={"sampler": "sled", "sled_layers": [0, 9]}),
         "real_vllm: sled_layers: layers [9] do not exist; early layers of this model are 0..3 (0 = embeddings, "
         "4 = the final layer itself)"),
        (dict(additional_config={"sampler": "dola", "dola_layers": [7]}),
         "real_vllm: dola_layers: layers [7] do not exist; early layers of this model are 0..3 (0 = embeddings, "
         "4 = the final layer itself)"),
        (dict(additional_config={"sampler": "dola", "dola_layers": "middle"}),
         "real_vllm: dola_layers must be 'low', 'high', 'every:1', 'every:K' or a list of layer indices like "
         "'0,4,8'; got 'middle'"),
        (dict(additional_config={"sampler": "sled", "sled_early_norm": "maybe"}),
         "real_vllm: sled_early_norm must be on or off, got 'maybe'"),
    ],
)
def test_start_up_refusals(tiny_model_dir, kwargs, message):
    kwargs.setdefault("additional_config", {"sampler": "sled"})
    with raises_exactly(StartupError, message) as excinfo:
        config(tiny_model_dir, **kwargs)
    check_type(excinfo, StartupError)


def test_speculative_decoding_rules(tiny_model_dir, monkeypatch):
    """V1 runner (this CPU build): no plugin processor runs under speculative decoding, so a
    default sampler is refused at start-up and a request naming one gets a 400 (ValueError in
    validate_params). --real-retokenize is refused on any runner. (Model Runner V2 runs the
    processors on every draft row: tests/test_spec_rows.py; its config needs Triton to build.)"""
    from vllm import SamplingParams

    from real_vllm.integration import frontend, processor

    monkeypatch.setitem(frontend.SERVED, "no_processors", False)
    spec = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}
    with raises_exactly(StartupError, "real_vllm: --sampler edt cannot run with speculative decoding on vLLM's V1 "
                        "model runner (it applies no plugin logits processors then); use Model Runner V2 (the "
                        "default on CUDA; VLLM_USE_V2_MODEL_RUNNER=1) or drop one of them") as excinfo:
        config(tiny_model_dir, additional_config={"sampler": "edt"}, speculative_config=spec)
    check_type(excinfo, StartupError)
    with raises_exactly(StartupError, "real_vllm: --real-retokenize cannot run with speculative decoding (REAL's "
                        "re-tokenised text history cannot take draft tokens); drop one of them") as excinfo:
        config(tiny_model_dir, additional_config={"real_retokenize": True}, speculative_config=spec)
    check_type(excinfo, StartupError)
    assert config(tiny_model_dir, speculative_config=spec).speculative_config.num_speculative_tokens == 2
    assert frontend.SERVED["no_processors"]
    with raises_exactly(ValueError, "real_vllm: sampler real is unavailable on this server: vLLM's V1 model runner "
                        "applies no plugin logits processor under speculative decoding") as excinfo:
        processor.RealVllmLogitsProcessor.validate_params(SamplingParams(extra_args={"sampler": "real"}))
    check_type(excinfo, ValueError)  # validate_params: vLLM turns a ValueError into HTTP 400
    processor.RealVllmLogitsProcessor.validate_params(SamplingParams())
    config(tiny_model_dir)
    assert not frontend.SERVED["no_processors"]
    processor.RealVllmLogitsProcessor.validate_params(SamplingParams(extra_args={"sampler": "real"}))


def test_an_architecture_without_a_wrapper_is_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128).save_pretrained(tmp_path)
    with raises_exactly(StartupError, "real_vllm: SLED/DoLa need early-layer hidden states, which real_vllm provides "
                        "for LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM; this model is ['GPT2Model']. An "
                        "architecture with the same structure can be added with "
                        f"{register_architecture.__module__}.register_architecture(...)") as excinfo:
        config(tmp_path, additional_config={"sampler": "sled"})
    check_type(excinfo, StartupError)


def test_layer_settings():
    assert EarlyLayerSettings(sled_layers="0, 4,8").sled_layers == (0, 4, 8)
    assert EarlyLayerSettings().resolve(30, True) == (list(range(30)), list(range(15, 30, 2)))
    assert EarlyLayerSettings(sled_layers="every:8", dola_layers="low").resolve(30, True) == (
        [0, 8, 16, 24], list(range(2, 15, 2)))
    assert candidate_layers(48, "high", False) == list(range(28, 48, 2))
    assert candidate_layers(48, "low", False) == list(range(0, 20, 2))
    for bad in ("", "every:", "1,x", [], [True], [-1]):
        with raises_exactly(ValueError, f"sled_layers {LAYERS_FORMS}; got {bad!r}") as excinfo:
            EarlyLayerSettings(sled_layers=bad)
        check_type(excinfo, ValueError)
