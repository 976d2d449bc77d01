"""A tiny random THF for the served tiny Llama (same tokenizer), built in the test session."""

from pathlib import Path

import torch

TINY_BACKBONE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=32, max_position_embeddings=64,
)


def build_tiny_thf(out_dir: Path, tokenizer_dir: Path, seed: int = 0, attention: str = "block", window: int = 40) -> Path:
    from transformers import AutoTokenizer

    from real_vllm.thf.fingerprint import tokenizer_fingerprint
    from real_vllm.thf.model import THFConfig, THFModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    files = [p.name for p in Path(tokenizer_dir).iterdir() if p.name.startswith("tokenizer")]
    config = THFConfig(
        sizes=[10.0, 12.0, 14.0],
        backbone={**TINY_BACKBONE, "vocab_size": len(tokenizer)},
        embedding_rank=None,
        attention=attention,
        window=window,
        tokenizer={"fingerprint": tokenizer_fingerprint(tokenizer), "files": files},
    )
    torch.manual_seed(seed)
    model = THFModel(config)
    # A random head (a trained one is not zero): d, hence p_t, varies with the context.
    torch.nn.init.normal_(model.head.weight, std=0.3)
    return model.save(out_dir, tokenizer_dir=tokenizer_dir, dtype=torch.float32)
