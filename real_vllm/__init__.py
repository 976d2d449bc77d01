"""real_vllm: factuality- and diversity-aware decoding as fused vLLM samplers."""

__version__ = "0.1.0"
