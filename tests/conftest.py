import contextlib
import gc
import os

import pytest
import torch

# Where CUDA is available the Triton kernels run natively; elsewhere they run on the CPU through
# the interpreter, which must be on before triton.jit decorates anything. Engines and servers
# are started without it (see engine_env).
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _on_gpu(primitive):
    """A triton-backend primitive run natively on the GPU for CPU test tensors: its tensors go
    to the GPU, what it wrote (contiguous tensors) and what it returns come back."""
    def run(*args):
        moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        out = primitive(*moved)
        for a, m in zip(args, moved):
            if isinstance(a, torch.Tensor) and a.is_contiguous():
                a.copy_(m)
        return out.cpu() if isinstance(out, torch.Tensor) else out
    return run


def _run_triton_natively_on_cuda() -> None:
    """On a CUDA machine, every op test that asks for backend="triton" on CPU tensors runs the
    kernels natively on the GPU (same inputs, same checks as under the interpreter); the op glue
    around them (top-k, merges) stays on the CPU. tests/test_gpu.py runs whole ops on CUDA.
    Done at import, before the test modules ask which backends are available."""
    from types import SimpleNamespace

    import real_vllm.ops as ops

    native = ops._triton_backend()
    shim = SimpleNamespace(**{name: _on_gpu(f) if callable(f) else f for name, f in vars(native).items()})
    reason, resolve = ops._unavailable_reason, ops._resolve
    ops._unavailable_reason = lambda b, d: None if b == "triton" else reason(b, d)
    ops._resolve = lambda b, d: shim if (b == "triton" and torch.device(d).type == "cpu") else resolve(b, d)


if CUDA:
    _run_triton_natively_on_cuda()

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
