"""A tiny random Llama with a real trained tokenizer, for engine tests that must not need a download.

The tokenizer is byte-level BPE trained on docstrings of the Python standard library
(real_vllm.stdlib_tokenizer), so every machine with this interpreter can rebuild it, and decoded
text looks like words rather than bytes.
The weights are random but scaled so logits are spread (std ~2.5): sampling at temperature 1 varies
from run to run while greedy decoding is deterministic, and top-k/top-p cut real mass.

The rows of lm_head for the special tokens (<|endoftext|>, <|im_start|>, <|im_end|> = eos) are
zero, which puts them far below the top logits: generations almost never stop early and run to
max_tokens, so output lengths in tests are predictable. Use stop_token_ids/stop strings to test
stopping.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from real_vllm.stdlib_tokenizer import SPECIAL_TOKENS, tokenizer_config, train_bpe
from real_vllm.utils import install_folder

HEAD_DIM = 32  # smallest head size vLLM's CPU attention backend accepts
# Logit std at the output: the final RMSNorm makes hidden entries ~unit, so lm_head entries get
# std LOGIT_STD / sqrt(hidden).
LOGIT_STD = 2.5

_PARAMS_FILE = "tiny_model_params.json"
_FORMAT_VERSION = 1


def build_tiny_llama(
    out_dir: Path,
    *,
    num_layers: int = 4,
    hidden: int = 64,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Build (or reuse) a tiny LlamaForCausalLM folder at `out_dir` and return it.

    `vocab_size` is the BPE training target; the model's vocabulary is exactly the trained
    tokenizer's. A folder already built with the same parameters is returned untouched. Building
    writes into a temp folder beside `out_dir` and renames it into place, so parallel test workers
    and killed runs never leave a half-built model at `out_dir`.
    """
    out_dir = Path(out_dir)
    if hidden % HEAD_DIM:
        raise ValueError(f"hidden must be a multiple of {HEAD_DIM} (vLLM CPU head sizes), got {hidden}")
    params = {
        "format_version": _FORMAT_VERSION,
        "num_layers": num_layers,
        "hidden": hidden,
        "vocab_size": vocab_size,
        "seed": seed,
        "python": "%d.%d" % sys.version_info[:2],
    }
    if _read_params(out_dir) == params:
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        vocab = _write_tokenizer(tmp, vocab_size)
        _write_model(tmp, vocab=vocab, num_layers=num_layers, hidden=hidden, seed=seed)
        (tmp / _PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
        _install(tmp, out_dir, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _read_params(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _install(tmp: Path, out_dir: Path, params: dict) -> None:
    if out_dir.exists() and _read_params(out_dir) is None and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a tiny model folder; not overwriting it")
    install_folder(tmp, out_dir, lambda folder: _read_params(folder) == params)


def _write_tokenizer(out: Path, vocab_size: int) -> int:
    tok = train_bpe(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    return tok.get_vocab_size()


def _write_model(out: Path, *, vocab: int, num_layers: int, hidden: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    n_head = hidden // HEAD_DIM
    n_kv = max(1, n_head // 2)  # grouped-query attention whenever there are 2+ heads
    inter = 4 * hidden
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, std):
        return torch.randn(*shape, generator=g) * std

    def linear(n_out, n_in):
        return normal(n_out, n_in, std=n_in ** -0.5)  # keeps the residual stream at unit scale

    w = {"model.embed_tokens.weight": normal(vocab, hidden, std=1.0)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(hidden)
        w[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
        w[p + "self_attn.q_proj.weight"] = linear(n_head * HEAD_DIM, hidden)
        w[p + "self_attn.k_proj.weight"] = linear(n_kv * HEAD_DIM, hidden)
        w[p + "self_attn.v_proj.weight"] = linear(n_kv * HEAD_DIM, hidden)
        w[p + "self_attn.o_proj.weight"] = linear(hidden, n_head * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
        w[p + "mlp.up_proj.weight"] = linear(inter, hidden)
        w[p + "mlp.down_proj.weight"] = linear(hidden, inter)
    w["model.norm.weight"] = torch.ones(hidden)
    lm_head = normal(vocab, hidden, std=LOGIT_STD / hidden ** 0.5)
    lm_head[: len(SPECIAL_TOKENS)] = 0.0  # trained tokenizers put the special tokens first
    w["lm_head.weight"] = lm_head
    save_file({k: v.contiguous() for k, v in w.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": num_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "vocab_size": vocab,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}, indent=2) + "\n")
