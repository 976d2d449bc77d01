"""The public op API: validate inputs, pick a backend, run it.

    import real_vllm.ops as ops
    ops.entropy(logits)                                   -> [B] float32, nats
    ops.edt_temperature(logits, t0, n, theta)             -> [B] EDT temperature
    ops.apply_temperature(logits, temperature)            -> logits / T per row
    ops.apply_edt(logits, t0, n, theta)                   -> (logits / T, T), one fused kernel
    ops.top_p_mask(logits, top_p)                         -> -inf outside each row's nucleus
    ops.sled_evolve(final, early, alpha, k, lower_bound)  -> SLED-evolved logits [B, V]
    ops.sled_evolve_from_hidden(final, hidden, weight, alpha, k, lower_bound)
                                                          -> the same from early hidden states,
                                                             never holding [L, B, V]
    ops.dola_contrast(final, early, relative_top, divergence)
                                                          -> (DoLa scores [B, V], layer [B])

``logits`` is [B, V] float32, bf16 or fp16 (computed in float32). Per-row parameters are a
Python number (same for every row) or a [B] tensor. The ``inplace=True`` variants need
contiguous float32 logits and write into them (that is what the vLLM integration uses).

Backends: ``reference`` (pure torch, :mod:`real_vllm.reference`), ``cpu`` (C++ ops in
``real_vllm._C``), ``triton`` (``real_vllm.kernels``; on CPU tensors only under
``TRITON_INTERPRET=1``), ``cuda`` (no CUDA-only kernels ship yet: the Triton kernels serve
GPUs) and ``auto``: triton on GPU tensors, cpu on CPU tensors, reference when neither is
available. Semantics, including non-finite rows, are the reference's: docs/algorithms.md (§7
for non-finite rows).
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
    "sled_evolve",
    "sled_evolve_from_hidden",
    "dola_contrast",
]

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


# --------------------------------------------------------------------------- backends
# Every backend provides the same primitives over contiguous float32 logits:
#   entropy(x) -> [B]; edt_temperature(x, t0, n, theta, min_scale) -> [B];
#   apply_temperature_(x, t); apply_edt_(x, t0, n, theta, min_scale) -> [B]; top_p_mask_(x, p)
# and SLED's two streaming steps (see sled_evolve_from_hidden), which the reference backend
# does not need (it evolves from the full early logits):
#   sled_stats_(x, early_chunk [L, B, C], offset, candidates [B, K], stats [5, L, B],
#               candidate_logits [L, B, K]);
#   sled_finish_(x, stats, candidates, num_candidates [B], candidate_logits, alpha, lower_bound)
# and optionally (None where absent) SLED's candidates in one pass (else torch.topk):
#   sled_top_k_(x, k [B] int64, candidates [B, K] int64, count [B] int64), K <= SLED_FUSED_TOP_K,
#               count -1 where a tie straddles the count-th place (see _sled_candidates);
# and the projection fused with the stats:
#   sled_hidden_stats_(x, hidden [L, B, H], weight [V, H], scale, candidates, stats,
#                      candidate_logits) -> False when it leaves the candidates to the chunks.


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
        sled_stats_=None,
        sled_finish_=None,
        sled_top_k_=None,
        sled_hidden_stats_=None,
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
        sled_stats_=getattr(o, "sled_stats_", None),  # None: an extension built before SLED
        sled_finish_=getattr(o, "sled_finish_", None),
        sled_top_k_=getattr(o, "sled_top_k_", None),  # None: an extension built before it
        sled_hidden_stats_=None,  # on CPU the chunked path's GEMM is MKL's
    )


@functools.cache
def _triton_backend() -> SimpleNamespace | str:
    try:
        from real_vllm.kernels import edt, entropy, sled, temperature, top_p
    except ImportError as e:
        return f"Triton is not importable ({e})"
    return SimpleNamespace(
        entropy=entropy.entropy,
        edt_temperature=edt.edt_temperature,
        apply_temperature_=temperature.apply_temperature_,
        apply_edt_=edt.apply_edt_,
        top_p_mask_=top_p.top_p_mask_,
        sled_stats_=sled.sled_stats_,
        sled_finish_=sled.sled_finish_,
        sled_top_k_=None,
        sled_hidden_stats_=sled.sled_hidden_stats_,
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
    # Resolved once per (backend, device type, Triton interpreter on/off: the one setting
    # _unavailable_reason reads from the environment, and only for triton on CPU): at batch 1
    # the checks cost as much as the kernel itself.
    interpreted = backend == "triton" and device.type == "cpu" and _triton_interpreted()
    return _resolve_for(backend, device.type, interpreted)


@functools.cache
def _resolve_for(backend: str, device_type: str, interpreted: bool) -> SimpleNamespace:
    device = torch.device(device_type)
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
    if (inplace and type(logits) is torch.Tensor and logits.dtype is torch.float32 and logits.dim() == 2
            and logits.is_contiguous() and logits.shape[1] != 0):
        return logits  # the sampler's case (every check below passes), in the fewest steps
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


@functools.lru_cache(maxsize=64)
def _filled(value: float, batch: int, device: torch.device) -> torch.Tensor:
    """A number as a [batch] float32 parameter, made once: kernels only read their parameters,
    and a fresh torch.full costs as much as a batch-1 kernel."""
    return torch.full((batch,), value, dtype=torch.float32, device=device)


def _per_row(name: str, value, logits: torch.Tensor) -> torch.Tensor:
    """A per-row parameter as a contiguous [B] float32 tensor on the logits' device."""
    batch = logits.shape[0]
    # The sampler's two cases first, in the fewest steps (at batch 1 these checks cost a
    # fifth of the kernel): a float, and what the kernels take already.
    if type(value) is float:
        return _filled(value, batch, logits.device)
    if (type(value) is torch.Tensor and value.dtype is torch.float32 and value.dim() == 1
            and value.shape[0] == batch and value.is_contiguous() and value.device == logits.device):
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, batch):
            raise ValueError(
                f"{name} must be a number or a [{batch}] tensor, got shape {tuple(value.shape)}"
            )
        t = value.to(device=logits.device, dtype=torch.float32)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return _filled(float(value), batch, logits.device)
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
    """EDT temperature per row: t0 * max(n ** (theta / H), min_scale) (docs/algorithms.md §1).
    [B] float32."""
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
    t = _resolve(backend, x.device).apply_edt_(
        x, _per_row("t0", t0, x), _per_row("n", n, x), _per_row("theta", theta, x), float(min_scale)
    )
    return x, t


def top_p_mask(
    logits: torch.Tensor, top_p, *, inplace: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Set every logit outside its row's top-p nucleus to -inf (sort-free on cpu/triton).

    docs/algorithms.md §3: the smallest set of most probable tokens whose mass reaches p, ties
    broken lowest index first, the top-1 token always kept; p >= 1 and non-finite rows (§7)
    are left unchanged. Every backend equals the exact float64 reference except for tokens
    whose mass-before is within float32 rounding of p (tests/test_ops.py).
    """
    x = _check_logits(logits, inplace)
    p = _per_row("top_p", top_p, x)
    _resolve(backend, x.device).top_p_mask_(x, p)
    return x


# --------------------------------------------------------------------------- SLED, DoLa
#
# SLED streams over the vocabulary: per early layer n and row it needs only the five stats
# m, z, a, s, dd ([5, L, B], merged chunk by chunk) and l_n at the k candidates
# (docs/algorithms.md §4.2). So the early logits are produced one vocabulary chunk at a time
# (one GEMM for all layers and rows) and dropped after the chunk's reduction.

SLED_STATS = 5  # m, z, a, s, dd
SLED_CHUNK = 16384  # vocabulary rows of lm_head per GEMM: [L * B, CHUNK] float32 at a time
# On the CPU a chunk this small is both a faster GEMM than the whole vocabulary's (MKL, one
# thread: the [L * B, chunk] output stays in cache) and read by sled_stats_ while still in cache.
# Measured on 2 AMD EPYC cores (benchmarks/bench_sled_parts.py, one early layer, hidden 576,
# vocabulary 49152): the step took 0.85x, 0.90x and 0.89x of one whole-vocabulary GEMM at batch
# 32, 8 and 4 (the chunked GEMM alone 0.76x, 0.82x, 0.85x), against 1.07x, 1.03x and 1.02x in
# one chunk; chunks of 512 to 2,048 came within noise of 1,024, 4,096 and up were slower.
SLED_CPU_CHUNK = 1024


def _host_k(k, batch: int) -> torch.Tensor:
    """k per row as a host int64 [B] tensor, validated there (a device tensor is copied once:
    a sync)."""
    if isinstance(k, torch.Tensor):
        if k.dim() == 0:
            k = k.reshape(1)
        if k.dim() != 1 or k.shape[0] not in (1, batch):
            raise ValueError(f"k must be a number or a [{batch}] tensor, got shape {tuple(k.shape)}")
        host = k.detach().to("cpu", torch.float64)
    elif isinstance(k, (int, float)) and not isinstance(k, bool):
        host = torch.tensor([float(k)], dtype=torch.float64)
    else:
        raise TypeError(f"k must be a number or a tensor, got {type(k).__name__}")
    if (host < 1).any() or (host != host.round()).any():
        raise ValueError("k must be whole numbers >= 1")
    return host.to(torch.int64).expand(batch)


SLED_FUSED_TOP_K = 256  # the widest top-k the C++ pass takes (csrc/sled.cpp kMaxFusedTopK)


def _sled_candidates(x: torch.Tensor, k, max_k: int | None = None, top_k_=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k candidates of each row ([B, width]: masked tokens never are one among the first
    count[b] of row b, the live ones) and that count: 0 for a row that is left alone (NaN or
    +inf in it, or nothing finite).

    The top-k width must be known on the host. It is, with no device sync, from a number, from
    a CPU tensor (validated there), or from ``max_k`` for a [B] tensor on the logits' device,
    which the caller vouches holds whole numbers in [1, max_k] (the processor validated every
    request's k and keeps the host copy); a device tensor without max_k is copied to the host
    once.

    ``top_k_``: a backend's one-pass top-k (sled_top_k_) for widths up to SLED_FUSED_TOP_K.
    Where a tie straddles a row's count-th place it leaves the row to torch.topk(row, count),
    the reference's own call (reference.sled_evolve), so that equal logits are chosen between
    exactly as there (docs/algorithms.md §4.1 step 2); elsewhere the top count are one set."""
    batch, vocab = x.shape
    trusted = isinstance(k, torch.Tensor) and k.device == x.device and max_k is not None
    if trusted:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        width, k = max_k, _per_row("k", k, x).to(torch.int64)
    else:
        k_host = _host_k(k, batch)
        width = int(k_host.max()) if batch else 0
        if isinstance(k, torch.Tensor):
            pinned = x.device.type == "cuda"
            k = (k_host.pin_memory() if pinned else k_host).to(x.device, non_blocking=pinned)
        else:  # a number: made on the device, nothing copied
            k = torch.full((batch,), int(k_host[0]) if batch else 1, dtype=torch.int64, device=x.device)
    if not batch:
        return torch.zeros(0, 0, dtype=torch.int64, device=x.device), k
    width = min(width, vocab)
    if top_k_ is not None and width <= SLED_FUSED_TOP_K:
        candidates = torch.empty(batch, width, dtype=torch.int64, device=x.device)
        count = torch.empty(batch, dtype=torch.int64, device=x.device)
        top_k_(x, k.contiguous(), candidates, count)
        for b in (count < 0).nonzero().flatten().tolist():  # rare: a tie at the count-th place
            row = x[b]
            live = int(min(int(k[b]), int((row > float("-inf")).sum())))
            candidates[b, :live] = torch.topk(row, live).indices
            count[b] = live
        return candidates, count
    # One pass over the logits (the top-k itself): it sorts NaN and +inf first, so its first value
    # flags a bad row, and a row with fewer finite tokens than k has -inf among its top k.
    top = torch.topk(x, width, dim=1)
    bad = ~(top.values[:, 0] < float("inf"))
    finite = (top.values > float("-inf")).sum(dim=1)
    count = torch.where(bad, torch.zeros_like(k), torch.minimum(k, finite))
    return top.indices, count


def _check_early(name: str, t: torch.Tensor, x: torch.Tensor, last: int | None) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[1] != x.shape[0]:
        raise ValueError(
            f"{name} must be [layers, {x.shape[0]}, {'vocab' if last is None else 'hidden'}],"
            f" got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
        )
    if last is not None and t.shape[2] != last:
        raise ValueError(f"{name} must be [layers, batch, {last}], got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one early layer")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device}, the logits on {x.device}")


def _sled_streaming(x, layers, alpha, k, max_k, lower_bound, impl, gather) -> None:
    """Run SLED in place on x: ``gather(candidates, stats, candidate_logits)`` fills the
    per-(layer, row) stats and the early logits at the candidates, then the backend finishes."""
    batch = x.shape[0]
    candidates, count = _sled_candidates(x, k, max_k, getattr(impl, "sled_top_k_", None))
    alpha = _per_row("alpha", alpha, x)
    lower_bound = _per_row("lower_bound", lower_bound, x)
    stats = torch.zeros(SLED_STATS, layers, batch, dtype=torch.float32, device=x.device)
    stats[0].fill_(float("-inf"))
    candidate_logits = torch.zeros(layers, batch, candidates.shape[1], dtype=torch.float32, device=x.device)
    gather(candidates, stats, candidate_logits)
    impl.sled_finish_(x, stats, candidates, count, candidate_logits, alpha, lower_bound)


def _chunk_stats(x, chunks, impl):
    """A gather for _sled_streaming from an iterator of (offset, early logits [L, B, C] float32)."""
    def gather(candidates, stats, candidate_logits):
        for offset, chunk in chunks:
            impl.sled_stats_(x, chunk, offset, candidates, stats, candidate_logits)
    return gather


def sled_evolve(
    final_logits: torch.Tensor,
    early_logits: torch.Tensor,
    alpha=2.0,
    k=10,
    lower_bound=-1000.0,
    *,
    max_k: int | None = None,
    inplace: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """SLED (arXiv 2411.02433): evolve final logits [B, V] with early-layer logits [L, B, V].

    The k most probable tokens get l_N - alpha * (softmax(l_N) - P_latent); every other
    finite token gets lower_bound (docs/algorithms.md §4.1). alpha, k, lower_bound: numbers
    or [B] tensors. ``max_k``: the largest k, known on the host; with a k tensor on the
    logits' device it spares a device sync (k is then trusted to hold whole numbers in
    [1, max_k]; see _sled_candidates).
    """
    x = _check_logits(final_logits, inplace)
    _check_early("early_logits", early_logits, x, None)
    if early_logits.shape[2] != x.shape[1]:
        raise ValueError(f"early_logits vocab {early_logits.shape[2]} != logits vocab {x.shape[1]}")
    impl = _resolve(backend, x.device)
    if impl.sled_stats_ is None:
        _sled_candidates(x, k, max_k)  # the same argument checks as the fast paths
        _per_row("alpha", alpha, x), _per_row("lower_bound", lower_bound, x)
        x.copy_(reference.sled_evolve(x, early_logits, alpha, k, lower_bound))
        return x
    early = early_logits.to(torch.float32).contiguous()
    _sled_streaming(x, early.shape[0], alpha, k, max_k, lower_bound, impl, _chunk_stats(x, [(0, early)], impl))
    return x


def sled_evolve_from_hidden(
    final_logits: torch.Tensor,
    early_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    alpha=2.0,
    k=10,
    lower_bound=-1000.0,
    *,
    logit_scale: float = 1.0,
    chunk: int | None = None,
    max_k: int | None = None,
    inplace: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """SLED from the early residual streams [L, B, H] and lm_head's weight [>= V, H] (``max_k``:
    as in sled_evolve).

    The early logits (logit_scale * h_n W^T) are made one vocabulary chunk at a time, all
    layers and rows in one GEMM that reads each weight row once, and reduced right away: the
    memory beyond the output is [L, B, chunk], whatever the vocabulary (``chunk``: vocabulary
    rows per GEMM, SLED_CPU_CHUNK on the CPU and SLED_CHUNK elsewhere by default). The triton backend
    fuses the projection with the reductions (kernels/sled.py, sled_hidden_stats_), so no chunk
    is ever stored; it takes the chunks only for more than 256 candidates.
    """
    x = _check_logits(final_logits, inplace)
    vocab = x.shape[1]
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[0] < vocab:
        raise ValueError(f"lm_head_weight must be [>= {vocab}, hidden], got {tuple(lm_head_weight.shape)}")
    _check_early("early_hidden", early_hidden, x, lm_head_weight.shape[1])
    impl = _resolve(backend, x.device)
    if chunk is None:
        chunk = SLED_CPU_CHUNK if x.device.type == "cpu" else SLED_CHUNK
    layers, batch, hidden_size = early_hidden.shape
    flat = early_hidden.reshape(layers * batch, hidden_size).to(lm_head_weight.dtype)

    def project(start: int, stop: int) -> torch.Tensor:
        logits = flat @ lm_head_weight[start:stop].T
        if logit_scale != 1.0:
            logits = logits * logit_scale
        return logits.to(torch.float32).reshape(layers, batch, stop - start)

    if impl.sled_stats_ is None:
        return sled_evolve(x, project(0, vocab), alpha, k, lower_bound, max_k=max_k, inplace=True, backend=backend)
    chunks = ((start, project(start, min(start + chunk, vocab))) for start in range(0, vocab, chunk))
    chunked = _chunk_stats(x, chunks, impl)
    if impl.sled_hidden_stats_ is None:
        gather = chunked
    else:  # the projection fused with the stats (Triton); many candidates take the chunks
        def gather(candidates, stats, candidate_logits):
            hidden = flat.reshape(layers, batch, hidden_size)
            fused = impl.sled_hidden_stats_(x, hidden, lm_head_weight[:vocab], logit_scale, candidates, stats,
                                            candidate_logits)
            if not fused:
                chunked(candidates, stats, candidate_logits)
    _sled_streaming(x, layers, alpha, k, max_k, lower_bound, impl, gather)
    return x


# --------------------------------------------------------------------------- working memory

WORKING_MEMORY = 256 * 2**20
"""Bytes of working memory one SLED or DoLa step may hold beyond its inputs and outputs (the
logits, the early hidden states, lm_head's weight): 256 MiB. vLLM's memory profiling does not
run logits processors, so this comes out of the few percent vLLM leaves free. The early-layer
processor splits its rows (and SLED's vocabulary chunks) to stay under it, and dola_contrast
splits its own rows; a single row that alone needs more is processed alone."""

DOLA_ROW_TEMPS = 9  # float32 [V] temporaries per row that dola_contrast holds at its peak


def dola_rows_per_block(vocab: int, budget: int = WORKING_MEMORY) -> int:
    """Rows dola_contrast takes at once so that its temporaries stay under ``budget`` bytes."""
    return max(1, int(budget) // (DOLA_ROW_TEMPS * 4 * max(1, vocab)))


def dola_contrast(
    final_logits: torch.Tensor,
    early_logits: torch.Tensor,
    relative_top=0.1,
    divergence="authors",
    *,
    inplace: bool = False,
    budget: int = WORKING_MEMORY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa (arXiv 2309.03883, docs/algorithms.md §5): (scores [B, V], the chosen premature
    layer [B]).

    divergence: "authors" (transformers' ``_dola_select_contrast``, the default), "jsd" (the
    paper's), or a [B] tensor (nonzero = jsd); semantics are reference.dola_contrast's. One
    implementation for every device, in torch, and lean: rows go in blocks of
    ``dola_rows_per_block(V, budget)``, the candidate layers one at a time, so beyond the
    inputs and the output it holds DOLA_ROW_TEMPS float32 [V] vectors per row of a block,
    never a copy of the [L, B, V] early logits. ``inplace=True`` writes the scores into the
    (contiguous float32) final logits.
    """
    x = _check_logits(final_logits, inplace, read_only=True)
    _check_early("early_logits", early_logits, x, None)
    if early_logits.shape[2] != x.shape[1]:
        raise ValueError(f"early_logits vocab {early_logits.shape[2]} != logits vocab {x.shape[1]}")
    if early_logits.shape[0] == 0:
        raise ValueError("early_logits must hold at least one candidate layer")
    batch, vocab = x.shape
    relative_top = _per_row("relative_top", relative_top, x)
    if isinstance(divergence, str):
        reference._dola_jsd_rows(divergence, 0, x.device)  # validates the name
        jsd = divergence == "jsd"
    else:
        jsd = reference._dola_jsd_rows(divergence, batch, x.device)
    out = x if inplace else torch.empty_like(x)
    premature = torch.zeros(batch, dtype=torch.int64, device=x.device)
    block = dola_rows_per_block(vocab, budget)
    for start in range(0, batch, block):
        rows = slice(start, min(start + block, batch))
        _dola_block(x[rows], early_logits[:, rows], relative_top[rows], jsd if isinstance(jsd, bool) else jsd[rows],
                    out[rows], premature[rows])
    return out, premature


def _dola_divergences(q, log_q, log_e, counted, jsd, vocab: int) -> torch.Tensor:
    """One candidate layer's divergence from the final layer, per row: the same expressions,
    in the same order, as reference.dola_contrast (so the same layer wins), with at most four
    [r, V] temporaries alive."""
    e = log_e.exp()
    m = torch.add(q, e).mul_(0.5)
    log_m = m.log()

    def kl(p, log_p, log_r):
        t = torch.sub(log_p, log_r).mul_(p)
        return t.masked_fill_(~(counted & (p > 0)), 0.0).sum(-1)

    authors = jsd_value = None
    if jsd is not True:
        authors = 0.5 * (kl(m, log_m, log_q) / vocab + kl(m, log_m, log_e) / vocab)
    if jsd is not False:
        jsd_value = 0.5 * (kl(q, log_q, log_m) + kl(e, log_e, log_m))
    if isinstance(jsd, bool):
        return jsd_value if jsd else authors
    return torch.where(jsd, jsd_value, authors)


def _dola_block(x, early, relative_top, jsd, out, premature) -> None:
    """dola_contrast on one block of rows: x [r, V], early [L, r, V] (a view), out [r, V]
    (may be x itself), premature [r] (written)."""
    rows, vocab = x.shape
    counted = x > float("-inf")  # a masked token carries no information
    log_q = torch.log_softmax(x, dim=-1)
    q = log_q.exp()
    best = torch.full((rows,), float("-inf"), device=x.device)
    for layer in range(early.shape[0]):
        log_e = torch.log_softmax(early[layer].to(torch.float32), dim=-1)
        d = _dola_divergences(q, log_q, log_e, counted, jsd, vocab)
        del log_e
        # strictly greater: the first layer wins a tie; a NaN wins and stays, as in argmax
        better = (d > best) | (torch.isnan(d) & ~torch.isnan(best))
        best = torch.where(better, d, best)
        premature.masked_fill_(better, layer)
    del q
    log_q_m = torch.log_softmax(early[premature, torch.arange(rows, device=x.device)].to(torch.float32), dim=-1)
    keep = log_q >= log_q.max(dim=-1, keepdim=True).values + torch.log(relative_top)[:, None]
    scores = log_q.sub_(log_q_m).masked_fill_(~keep, float("-inf"))
    del log_q_m, keep
    unchanged = reference._bad_rows(x) | ~counted.any(dim=-1)
    torch.where(unchanged[:, None], x, scores, out=out)
