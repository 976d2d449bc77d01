"""What a SLED/DoLa server refuses at start-up, with a message that says what to do, and the
layer settings. Engine configs are built without starting an engine."""

import pytest
from vllm.engine.arg_utils import EngineArgs

import real_vllm.integration.plugin as plugin
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}),
         "speculative decoding"),
        (dict(pipeline_parallel_size=2), "pipeline"),
        (dict(enable_batch_sharded_sampling=True), "does not support batch-sharded sampling"),
        (dict(additional_config={"sampler": "sled", "sled_layers": "every:0"}), "sled_layers"),
        (dict(additional_config={"sampler": "sled", "sled_layers": [0, 9]}), r"layers \[9\] do not exist"),
        (dict(additional_config={"sampler": "dola", "dola_layers": "middle"}), "dola_layers"),
        (dict(additional_config={"sampler": "sled", "sled_early_norm": "maybe"}), "sled_early_norm"),
    ],
)
def test_start_up_refusals(tiny_model_dir, kwargs, message):
    kwargs.setdefault("additional_config", {"sampler": "sled"})
    with pytest.raises(Exception, match=message):
        config(tiny_model_dir, **kwargs)


def test_speculative_decoding_rules(tiny_model_dir, monkeypatch):
    """V1 runner (this CPU build): no plugin processor runs under speculative decoding, so a
    default sampler is refused at start-up and a request naming one gets a 400 (ValueError in
    validate_params). --real-retokenize is refused on any runner. (Model Runner V2 runs the
    processors on every draft row: tests/test_spec_rows.py; its config needs Triton to build.)"""
    from vllm import SamplingParams

    from real_vllm.integration import processor

    monkeypatch.setitem(processor.SERVED, "no_processors", False)
    spec = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}
    with pytest.raises(ValueError, match="V1 model runner"):
        config(tiny_model_dir, additional_config={"sampler": "edt"}, speculative_config=spec)
    with pytest.raises(ValueError, match="--real-retokenize cannot run with speculative decoding"):
        config(tiny_model_dir, additional_config={"real_retokenize": True}, speculative_config=spec)
    assert config(tiny_model_dir, speculative_config=spec).speculative_config
    assert processor.SERVED["no_processors"]
    with pytest.raises(ValueError, match="speculative decoding"):
        processor.RealVllmLogitsProcessor.validate_params(SamplingParams(extra_args={"sampler": "real"}))
    processor.RealVllmLogitsProcessor.validate_params(SamplingParams())
    config(tiny_model_dir)
    assert not processor.SERVED["no_processors"]
    processor.RealVllmLogitsProcessor.validate_params(SamplingParams(extra_args={"sampler": "real"}))


def test_an_architecture_without_a_wrapper_is_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128).save_pretrained(tmp_path)
    with pytest.raises(Exception, match="register_architecture"):
        config(tmp_path, additional_config={"sampler": "sled"})


def test_layer_settings():
    assert EarlyLayerSettings(sled_layers="0, 4,8").sled_layers == (0, 4, 8)
    assert EarlyLayerSettings().resolve(30, True) == (list(range(30)), list(range(15, 30, 2)))
    assert EarlyLayerSettings(sled_layers="every:8", dola_layers="low").resolve(30, True) == (
        [0, 8, 16, 24], list(range(2, 15, 2)))
    assert candidate_layers(48, "high", False) == list(range(28, 48, 2))
    assert candidate_layers(48, "low", False) == list(range(0, 20, 2))
    for bad in ("", "every:", "1,x", [], [True], [-1]):
        with pytest.raises(ValueError, match="sled_layers"):
            EarlyLayerSettings(sled_layers=bad)
