import contextlib
import gc
import os

import pytest

# Triton kernels run on the CPU through the interpreter; it must be on before triton.jit
# decorates anything. Engines and servers are started without it (see engine_env).
os.environ.setdefault("TRITON_INTERPRET", "1")

ENGINE_KWARGS = dict(dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=16, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")


@contextlib.contextmanager
def engine_env():
    """The environment an engine's child processes inherit: no Triton interpreter, a small
    KV cache."""
    saved = dict(os.environ)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_llm(model_dir, **kwargs):
    from vllm import LLM

    with engine_env():
        return LLM(model=str(model_dir), **{**ENGINE_KWARGS, **kwargs})


def close_llm(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
