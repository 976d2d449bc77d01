"""The public op API: validate inputs, pick a backend, run it.

    import real_vllm.ops as ops
    ops.entropy(logits)                                   -> [B] float32, nats
    ops.edt_temperature(logits, t0, n, theta)             -> [B] EDT temperature
    ops.apply_temperature(logits, temperature)            -> logits / T per row
    ops.apply_edt(logits, t0, n, theta)                   -> (logits / T, T), one fused kernel
    ops.top_p_mask(logits, top_p)                         -> -inf outside each row's nucleus

``logits`` is [B, V] float32, bf16 or fp16 (computed in float32). Per-row parameters are a
Python number (same for every row) or a [B] tensor. The ``inplace=True`` variants need
contiguous float32 logits and write into them (that is what the vLLM integration uses).

Backends: ``reference`` (pure torch, :mod:`real_vllm.reference`), ``cpu`` (C++ ops in
``real_vllm._C``), ``triton`` (``real_vllm.kernels``; on CPU tensors only under
``TRITON_INTERPRET=1``), ``cuda`` (no CUDA-only kernels ship yet: the Triton kernels serve
GPUs) and ``auto``: triton on GPU tensors, cpu on CPU tensors, reference when neither is
available. Semantics, including non-finite rows, are the reference's.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

from real_vllm import reference

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "entropy",
    "edt_temperature",
    "apply_temperature",
    "apply_edt",
    "top_p_mask",
]

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


# --------------------------------------------------------------------------- backends
# Every backend provides the same five primitives over contiguous float32 logits:
#   entropy(x) -> [B]; edt_temperature(x, t0, n, theta, min_scale) -> [B];
#   apply_temperature_(x, t); apply_edt_(x, t0, n, theta, min_scale) -> [B]; top_p_mask_(x, p)


def _reference_backend() -> SimpleNamespace:
    def apply_temperature_(x, t):
        x.copy_(reference.apply_temperature(x, t))

    def apply_edt_(x, t0, n, theta, min_scale):
        t = reference.edt_temperature(x, t0, n, theta, min_scale)
        x.copy_(reference.apply_temperature(x, t))
        return t

    def top_p_mask_(x, p):
        x.copy_(reference.top_p_mask(x, p))

    return SimpleNamespace(
        entropy=reference.entropy,
        edt_temperature=reference.edt_temperature,
        apply_temperature_=apply_temperature_,
        apply_edt_=apply_edt_,
        top_p_mask_=top_p_mask_,
    )


@functools.cache
def _cpu_backend() -> SimpleNamespace | str:
    try:
        import real_vllm._C  # noqa: F401  (registers torch.ops.real_vllm.*)
    except ImportError as e:
        return (
            f"the C++ extension real_vllm._C is not built ({e}); reinstall with "
            "`pip install --no-build-isolation -e .` (see the README)"
        )
    o = torch.ops.real_vllm
    return SimpleNamespace(
        entropy=o.entropy,
        edt_temperature=o.edt_temperature,
        apply_temperature_=o.apply_temperature_,
        apply_edt_=o.apply_edt_,
        top_p_mask_=o.top_p_mask_,
    )


@functools.cache
def _triton_backend() -> SimpleNamespace | str:
    try:
        from real_vllm.kernels import edt, entropy, temperature, top_p
    except ImportError as e:
        return f"Triton is not importable ({e})"
    return SimpleNamespace(
        entropy=entropy.entropy,
        edt_temperature=edt.edt_temperature,
        apply_temperature_=temperature.apply_temperature_,
        apply_edt_=edt.apply_edt_,
        top_p_mask_=top_p.top_p_mask_,
    )


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _unavailable_reason(backend: str, device: torch.device) -> str | None:
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, these are on {device}"
        impl = _cpu_backend()
        return impl if isinstance(impl, str) else None
    if backend == "triton":
        if device.type == "cpu" and not _triton_interpreted():
            return "Triton runs on CPU tensors only with TRITON_INTERPRET=1"
        impl = _triton_backend()
        return impl if isinstance(impl, str) else None
    if backend == "cuda":
        return "no CUDA-only kernels ship in this build; the triton backend serves GPUs"
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The concrete backends that can run on ``device`` here."""
    device = torch.device(device)
    return [b for b in BACKENDS[1:] if _unavailable_reason(b, device) is None]


def _resolve(backend: str, device: torch.device) -> SimpleNamespace:
    if backend == "auto":
        preferred = ("triton", "reference") if device.type != "cpu" else ("cpu", "reference")
        backend = next(b for b in preferred if _unavailable_reason(b, device) is None)
    reason = _unavailable_reason(backend, device)
    if reason is not None:
        raise BackendUnavailable(f"backend {backend!r} is not available: {reason}")
    if backend == "reference":
        return _reference_backend()
    return _cpu_backend() if backend == "cpu" else _triton_backend()


# --------------------------------------------------------------------------- validation


def _check_logits(logits: torch.Tensor, inplace: bool, read_only: bool = False) -> torch.Tensor:
    """Validate logits; return the float32 contiguous tensor a kernel works on: the input
    itself (inplace, or a read-only op on float32 input), else a float32 copy."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension")
    if inplace:
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            raise ValueError("inplace=True needs contiguous float32 logits")
        return logits
    if read_only:
        return logits.to(torch.float32).contiguous()
    return logits.to(torch.float32, copy=True).contiguous()


def _per_row(name: str, value, logits: torch.Tensor) -> torch.Tensor:
    """A per-row parameter as a contiguous [B] float32 tensor on the logits' device."""
    batch = logits.shape[0]
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, batch):
            raise ValueError(
                f"{name} must be a number or a [{batch}] tensor, got shape {tuple(value.shape)}"
            )
        t = value.to(device=logits.device, dtype=torch.float32)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor([float(value)], dtype=torch.float32, device=logits.device)
    else:
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return t.expand(batch).contiguous()


# --------------------------------------------------------------------------- the ops


def entropy(logits: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Entropy of softmax(logits) per row, in nats: [B] float32."""
    x = _check_logits(logits, inplace=False, read_only=True)
    return _resolve(backend, x.device).entropy(x)


def edt_temperature(
    logits: torch.Tensor, t0, n=0.8, theta=1.0, min_scale: float = 1e-5, *, backend="auto"
) -> torch.Tensor:
    """EDT temperature per row: t0 * max(n ** (theta / H), min_scale). [B] float32."""
    x = _check_logits(logits, inplace=False, read_only=True)
    t0, n, theta = (_per_row(k, v, x) for k, v in (("t0", t0), ("n", n), ("theta", theta)))
    return _resolve(backend, x.device).edt_temperature(x, t0, n, theta, float(min_scale))


def apply_temperature(
    logits: torch.Tensor, temperature, *, inplace: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """logits / T per row (a true division), float32."""
    x = _check_logits(logits, inplace)
    t = _per_row("temperature", temperature, x)
    _resolve(backend, x.device).apply_temperature_(x, t)
    return x


def apply_edt(
    logits: torch.Tensor,
    t0,
    n=0.8,
    theta=1.0,
    min_scale: float = 1e-5,
    *,
    inplace: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """EDT in one kernel: a stats pass (max, normaliser, entropy) and a scaling pass.

    Returns (logits / T, T).
    """
    x = _check_logits(logits, inplace)
    t0, n, theta = (_per_row(k, v, x) for k, v in (("t0", t0), ("n", n), ("theta", theta)))
    t = _resolve(backend, x.device).apply_edt_(x, t0, n, theta, float(min_scale))
    return x, t


def top_p_mask(
    logits: torch.Tensor, top_p, *, inplace: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Set every logit outside its row's top-p nucleus to -inf (sort-free on cpu/triton)."""
    x = _check_logits(logits, inplace)
    p = _per_row("top_p", top_p, x)
    _resolve(backend, x.device).top_p_mask_(x, p)
    return x
