"""SLED (ops.sled_evolve, ops.sled_evolve_from_hidden) on every backend, against
reference.sled_evolve and an independent float64 oracle written here.

Inputs are fresh random draws (no fixed seed: a failure prints the seed to rerun with
REAL_VLLM_TEST_SEED). Vocabularies that are not powers of two, chunks that do not divide
them; edge rows: masked (-inf) tokens, k beyond the finite entries, one huge logit, a
uniform row (ties at the top-k boundary), NaN / +inf / all -inf rows (left unchanged),
per-row alpha, k and lower_bound. The Triton interpreter is slow: it gets the small shapes.
"""

import math
import os
import random

import pytest
import torch

import real_vllm.ops as ops
from real_vllm import reference

SEED = int(os.environ.get("REAL_VLLM_TEST_SEED", random.randrange(2**31)))
BACKENDS = ["reference", "cpu", "triton"]
SHAPES = [(1, 7), (3, 1000), (5, 4097), (2, 49152)]
TRITON_MAX_VOCAB = 4097
# L * k * V: reference.sled_evolve builds [L, k, V] per row. Up to the first it is what a fast
# backend is also compared with; past the second the reference backend is not run.
REFERENCE_MAX_WORK = 500_000
REFERENCE_BACKEND_MAX_WORK = 4_000_000
ATOL = RTOL = 1e-4

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's -inf - -inf


@pytest.fixture
def gen():
    g = torch.Generator().manual_seed(SEED)
    print(f"REAL_VLLM_TEST_SEED={SEED}")
    return g


def need(backend: str, vocab: int = 0) -> None:
    """Skip unless ``backend`` runs SLED here (the reference always does)."""
    if backend == "triton" and vocab > TRITON_MAX_VOCAB:
        pytest.skip("the Triton interpreter gets the small vocabularies only")
    try:
        impl = ops._resolve(backend, torch.device("cpu"))
    except ops.BackendUnavailable as e:
        pytest.skip(str(e))
    except AttributeError as e:  # a real_vllm._C built before its SLED ops
        pytest.skip(f"backend {backend!r} has no SLED ops: {e}")
    if backend != "reference" and getattr(impl, "sled_stats_", None) is None:
        pytest.skip(f"backend {backend!r} has no sled_stats_")


# --------------------------------------------------------------------------- inputs


def make_final(batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Random rows, with edge rows cycled into the batch."""
    scale = torch.empty(batch, 1).uniform_(0.5, 4.0, generator=gen)
    x = torch.randn(batch, vocab, generator=gen) * scale
    for r in range(batch):
        kind = r % 5
        if kind == 1:  # some tokens masked
            x[r, torch.rand(vocab, generator=gen) < 0.3] = -math.inf
        elif kind == 2:  # one huge logit
            x[r, torch.randint(vocab, (1,), generator=gen)] += 60.0
        elif kind == 3:  # a NaN: left unchanged
            x[r, torch.randint(vocab, (1,), generator=gen)] = math.nan
        elif kind == 4:  # three finite entries: k beyond them
            keep = torch.randperm(vocab, generator=gen)[:3]
            row = torch.full((vocab,), -math.inf)
            row[keep] = x[r, keep]
            x[r] = row
    return x


def make_early(layers: int, batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    # Moderate spreads: an early softmax that puts ~all its mass on one candidate makes
    # |p_n - e_i|^2 = s / z^2 - 2 p_n(i) + 1 a difference of nearly equal float32 numbers in
    # the streaming backends, and the cosine of that (layer, candidate) mostly rounding.
    scale = torch.empty(layers, batch, 1).uniform_(0.3, 1.5, generator=gen)
    return torch.randn(layers, batch, vocab, generator=gen) * scale


def row_params(batch: int, value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64).flatten().expand(batch).clone()


# --------------------------------------------------------------------------- the checks


def oracle_row(row, early, alpha: float, chosen, lower_bound: float) -> torch.Tensor:
    """float64 SLED of one row [V] with early [L, V] and the candidate indices ``chosen``,
    from docs/algorithms.md §4.1 directly: no real_vllm code."""
    row = row.double()
    early = early.double()
    finite = row > -math.inf
    p_final = torch.softmax(row, dim=-1)
    p_early = torch.softmax(early, dim=-1)  # [L, V]
    diff = torch.where(finite, early - row, torch.zeros_like(early))
    # (l_n - l_N) . (p_n - e_i) and |p_n - e_i|^2 = sum_{v != i} p_v^2 + (1 - p_i)^2.
    dot = (diff * p_early).sum(-1, keepdim=True) - diff[:, chosen]
    sq = (p_early**2).sum(-1, keepdim=True) - p_early[:, chosen] ** 2 + (1 - p_early[:, chosen]) ** 2
    norm = torch.sqrt((diff**2).sum(-1, keepdim=True) * sq)
    cos = torch.where(norm > 0, dot / norm.clamp_min(1e-300), torch.zeros_like(dot))
    w = cos.clamp_min(0) ** 2
    latent = w.sum(0) / w.sum() if w.sum() > 0 else torch.zeros(len(chosen), dtype=torch.float64)
    out = torch.where(finite, torch.full_like(row, lower_bound), row)
    out[chosen] = row[chosen] - alpha * (p_final[chosen] - latent)
    return out


def unambiguous(row: torch.Tensor, kb: int) -> bool:
    """Whether row's top-kb set is unique (no tie across the boundary)."""
    finite = row[row > -math.inf]
    if kb >= finite.numel():
        return True
    top = torch.topk(finite, kb + 1).values
    return bool(top[kb - 1] > top[kb])


def check_sled(got, x, early, alpha, k, lower_bound, compare_reference=True):
    """got must be SLED of x: the float64 oracle on the candidates got chose (which must be a
    top-k set), and reference.sled_evolve where the top-k set is unambiguous."""
    batch, vocab = x.shape
    assert got.shape == x.shape and got.dtype == torch.float32
    alpha, k, lower_bound = (row_params(batch, v) for v in (alpha, k, lower_bound))
    want = None
    if compare_reference and early.shape[0] * int(k.max()) * vocab <= REFERENCE_MAX_WORK:
        want = reference.sled_evolve(x, early, alpha.float(), k.float(), lower_bound.float())
    for b in range(batch):
        row = x[b]
        finite = row > -math.inf
        if torch.isnan(row).any() or (row == math.inf).any() or not finite.any():
            torch.testing.assert_close(got[b], row, rtol=0, atol=0, equal_nan=True,
                                       msg=f"row {b} (non-finite) must be left unchanged")
            continue
        assert (got[b][~finite] == -math.inf).all(), f"row {b}: a masked token was unmasked"
        kb = min(int(k[b]), int(finite.sum()))
        chosen = finite & (got[b] != float(lower_bound[b]))
        assert int(chosen.sum()) == kb, f"row {b}: {int(chosen.sum())} evolved tokens, want {kb}"
        rest = finite & ~chosen
        if rest.any():
            assert row[chosen].min() >= row[rest].max(), f"row {b}: the evolved tokens are not a top-k"
        idx = chosen.nonzero().flatten()
        expected = oracle_row(row, early[:, b], float(alpha[b]), idx, float(lower_bound[b]))
        torch.testing.assert_close(got[b, idx].double(), expected[idx], atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"row {b} vs the float64 oracle: {m}")
        if want is not None and unambiguous(row, kb):
            torch.testing.assert_close(got[b], want[b], atol=ATOL, rtol=RTOL,
                                       msg=lambda m: f"row {b} vs reference.sled_evolve: {m}")


# --------------------------------------------------------------------------- the ops


@pytest.mark.parametrize("alpha", [0.0, 2.0])
@pytest.mark.parametrize("k", [1, 10, "V"])
@pytest.mark.parametrize("layers", [1, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sled_evolve(backend, shape, layers, k, alpha, gen):
    batch, vocab = shape
    k = vocab if k == "V" else k
    need(backend, vocab)
    if backend == "reference" and layers * k * vocab > REFERENCE_BACKEND_MAX_WORK:
        pytest.skip("reference.sled_evolve would build [L, V, V]")
    x = make_final(batch, vocab, gen)
    early = make_early(layers, batch, vocab, gen)
    x_before, early_before = x.clone(), early.clone()
    got = ops.sled_evolve(x, early, alpha, k, -1000.0, backend=backend)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0, equal_nan=True, msg="x was changed")
    assert torch.equal(early, early_before), "early_logits were changed"
    check_sled(got, x, early, alpha, k, -1000.0)


FROM_HIDDEN = [  # (batch, vocab, chunk): chunks smaller than V and not dividing it
    (1, 7, 3),
    (3, 1000, 300),
    (3, 1000, 999),
    (3, 1000, 4096),
    (5, 4097, 1000),
    (2, 49152, 5000),
    (2, 49152, ops.SLED_CHUNK),
]


@pytest.mark.parametrize("k", [10, "V"])
@pytest.mark.parametrize("layers", [1, 4])
@pytest.mark.parametrize("case", FROM_HIDDEN, ids=lambda c: "B%d-V%d-chunk%d" % c)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sled_evolve_from_hidden(backend, case, layers, k, gen):
    batch, vocab, chunk = case
    k = vocab if k == "V" else k
    need(backend, vocab)
    if backend == "reference" and layers * k * vocab > REFERENCE_BACKEND_MAX_WORK:
        pytest.skip("reference.sled_evolve would build [L, V, V]")
    hidden = 24
    x = make_final(batch, vocab, gen)
    h = torch.randn(layers, batch, hidden, generator=gen)
    weight = torch.randn(vocab + 5, hidden, generator=gen) * 0.2  # lm_head may be padded
    scale = 0.5
    alpha = torch.empty(batch).uniform_(0.5, 3.0, generator=gen)
    got = ops.sled_evolve_from_hidden(x, h, weight, alpha, k, -500.0, logit_scale=scale,
                                      chunk=chunk, backend=backend)
    early = (h.reshape(layers * batch, hidden) @ weight[:vocab].T * scale).reshape(layers, batch, vocab)
    check_sled(got, x, early, alpha, k, -500.0)


@pytest.mark.parametrize("k,fused", [(10, True), (300, False)])
def test_triton_from_hidden_fuses_the_projection_up_to_256_candidates(k, fused, gen, monkeypatch):
    """The triton backend's from_hidden path: h W^T fused with the stats (checked against the
    float64 oracle), and more candidates than the kernel gathers take the chunked path."""
    need("triton", 1000)
    from real_vllm.kernels import sled as sled_kernels

    taken = []
    impl = ops._resolve("triton", torch.device("cpu"))

    def spy(*args):
        taken.append(sled_kernels.sled_hidden_stats_(*args))
        return taken[-1]

    monkeypatch.setattr(impl, "sled_hidden_stats_", spy)
    batch, vocab, hidden, layers = 4, 1000, 40, 3
    x = make_final(batch, vocab, gen)
    h = torch.randn(layers, batch, hidden, generator=gen)
    weight = torch.randn(vocab + 3, hidden, generator=gen) * 0.2
    got = ops.sled_evolve_from_hidden(x, h, weight, 1.5, k, -500.0, logit_scale=0.7, backend="triton")
    assert taken == [fused]
    early = (h.reshape(layers * batch, hidden) @ weight[:vocab].T * 0.7).reshape(layers, batch, vocab)
    check_sled(got, x, early, 1.5, k, -500.0)


@pytest.mark.parametrize("spread", [0.2, 3.0])  # flat and peaked early distributions
def test_triton_fused_stats_equal_the_float64_sums(spread, gen):
    """sled_hidden_stats_'s five sums per (layer, row) against float64 on the same early logits:
    the final tokens' masks, the split merge and every tile's rescaling show here (the evolved
    logits hardly depend on s = sum p^2 when the distribution is flat)."""
    need("triton", 1000)
    from real_vllm.kernels import sled as sled_kernels

    layers, batch, vocab, hidden, k = 3, 5, 1000, 24, 10
    x = make_final(batch, vocab, gen)
    h = torch.randn(layers, batch, hidden, generator=gen)
    weight = torch.randn(vocab, hidden, generator=gen) * spread
    candidates = torch.topk(torch.nan_to_num(x, nan=0.0, posinf=0.0), k, dim=1).indices.contiguous()
    stats = torch.zeros(5, layers, batch)
    stats[0] = -math.inf
    candidate_logits = torch.zeros(layers, batch, k)
    assert sled_kernels.sled_hidden_stats_(x, h, weight, 0.5, candidates, stats, candidate_logits)
    early = (h.double() @ weight.double().T) * 0.5
    m = early.amax(-1)
    p = torch.exp(early - m[..., None])
    finite = x.double()[None] > -math.inf
    d = torch.where(finite, early - x.double()[None], torch.zeros_like(early))
    want = torch.stack([m, p.sum(-1), (d * p).sum(-1), (p * p).sum(-1), (d * d).sum(-1)])
    # The kernel's early logits are float32 (|l| up to ~50 at spread 3): their rounding alone
    # moves the exp sums by up to ~5e-6 relative (seen: 4.8e-6); a wrong rescale or merge is O(1).
    torch.testing.assert_close(stats.double(), want, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(candidate_logits.double(), early.gather(2, candidates[None].expand(layers, -1, -1)),
                               rtol=1e-6, atol=1e-5)


def edge_rows(vocab: int) -> torch.Tensor:
    """One row per edge case; the per-row k below goes with them."""
    g = torch.Generator().manual_seed(SEED + 1)
    rows = torch.randn(8, vocab, generator=g) * 2
    rows[0, torch.rand(vocab, generator=g) < 0.5] = -math.inf  # masked tokens
    rows[0, 0] = 0.0  # at least one finite
    rows[1] = -math.inf  # k (5) beyond its 2 finite entries
    rows[1, [1, vocab - 1]] = torch.tensor([0.5, -0.25])
    rows[2, vocab // 2] = 80.0  # one huge logit
    rows[3] = 1.25  # uniform: every top-k set is a tie; k = V makes it unambiguous
    rows[4, vocab // 3] = math.nan  # unchanged
    rows[5] = -math.inf  # unchanged
    rows[6, 1] = math.inf  # unchanged
    rows[7] = 1.25  # uniform with k < V: any k tokens are a correct top-k
    return rows


@pytest.mark.parametrize("vocab", [7, 1000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sled_edge_rows_and_per_row_parameters(backend, vocab, gen):
    need(backend, vocab)
    x = edge_rows(vocab)
    early = make_early(3, x.shape[0], vocab, gen)
    alpha = torch.tensor([2.0, 1.0, 3.0, 0.5, 2.0, 2.0, 2.0, 1.5])
    k = torch.tensor([3, 5, 10, vocab, 4, 2, 2, 4])
    lower_bound = torch.tensor([-1000.0, -50.0, -1e4, -7.0, -1000.0, -1000.0, -1000.0, -3.0])
    got = ops.sled_evolve(x, early, alpha, k, lower_bound, backend=backend)
    check_sled(got, x, early, alpha, k, lower_bound)
    assert (got[1] > -math.inf).sum() == 2  # only its two finite tokens, both evolved
    # The same through from_hidden, with a chunk that does not divide V.
    hidden = 16
    h = torch.randn(3, x.shape[0], hidden, generator=gen)
    weight = torch.randn(vocab, hidden, generator=gen) * 0.3
    got = ops.sled_evolve_from_hidden(x, h, weight, alpha, k, lower_bound, chunk=max(2, vocab // 3 + 1),
                                      backend=backend)
    check_sled(got, x, (h.reshape(-1, hidden) @ weight.T).reshape(3, x.shape[0], vocab), alpha, k, lower_bound)


@pytest.mark.parametrize("shape", [(1, 7), (5, 1000), (2, 49152)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_zero_and_k_vocab_give_the_logits_back(backend, shape, gen):
    batch, vocab = shape
    need(backend, vocab)
    if backend == "reference" and vocab > 4097:
        pytest.skip("reference.sled_evolve would build [L, V, V]")
    x = make_final(batch, vocab, gen)
    early = make_early(2, batch, vocab, gen)
    got = ops.sled_evolve(x, early, 0.0, vocab, -1000.0, backend=backend)
    torch.testing.assert_close(got, x, rtol=0, atol=0, equal_nan=True)
    inplace = x.clone()
    out = ops.sled_evolve(inplace, early, 0.0, vocab, -1000.0, inplace=True, backend=backend)
    assert out is inplace
    torch.testing.assert_close(out, x, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_and_tensor_parameters_agree(backend, gen):
    need(backend, 1000)
    x = make_final(3, 1000, gen)
    early = make_early(2, 3, 1000, gen)
    a = ops.sled_evolve(x, early, 1.5, 10, -100.0, backend=backend)
    b = ops.sled_evolve(x, early, torch.full((3,), 1.5), torch.full((3,), 10), torch.full((3,), -100.0),
                        backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_stats_primitive_streams_like_one_pass(backend, gen):
    """sled_stats_ over uneven chunks gives the float64 sums over the whole vocabulary, and
    copies the candidates' early logits."""
    need(backend, 1000)
    impl = ops._resolve(backend, torch.device("cpu"))
    layers, batch, vocab = 3, 2, 1000
    x = torch.randn(batch, vocab, generator=gen) * 2
    x[1, torch.rand(vocab, generator=gen) < 0.4] = -math.inf
    early = make_early(layers, batch, vocab, gen) * 3
    candidates = torch.topk(x, 6, dim=1).indices.contiguous()
    candidates[1, 5] = vocab - 1  # one in the last, ragged chunk
    stats = torch.zeros(5, layers, batch)
    stats[0] = -math.inf
    cl = torch.zeros(layers, batch, 6)
    for start, stop in [(0, 130), (130, 131), (131, 700), (700, vocab)]:
        impl.sled_stats_(x, early[:, :, start:stop].contiguous(), start, candidates, stats, cl)
    e, f = early.double(), x.double()[None]
    finite = f > -math.inf
    m = e.amax(-1)
    p = (e - m[..., None]).exp()
    diff = torch.where(finite, e - f, torch.zeros_like(e))
    want = torch.stack([m, p.sum(-1), (diff * p).sum(-1), (p * p).sum(-1), (diff**2).sum(-1)])
    torch.testing.assert_close(stats.double(), want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cl, early.gather(2, candidates[None].expand(layers, -1, -1)), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise_clear_errors(backend):
    need(backend)
    x = torch.randn(3, 50)
    early = torch.randn(2, 3, 50)
    with pytest.raises(ValueError, match="k must be whole numbers >= 1"):
        ops.sled_evolve(x, early, k=0, backend=backend)
    with pytest.raises(ValueError, match="k must be whole numbers >= 1"):
        ops.sled_evolve(x, early, k=torch.tensor([1, 0, 2]), backend=backend)
    with pytest.raises(ValueError, match=r"early_logits must be \[layers, 3, vocab\]"):
        ops.sled_evolve(x, torch.randn(2, 4, 50), backend=backend)
    with pytest.raises(ValueError, match=r"early_logits must be \[layers, 3, vocab\]"):
        ops.sled_evolve(x, torch.randn(3, 50), backend=backend)
    with pytest.raises(ValueError, match="early_logits vocab 49 != logits vocab 50"):
        ops.sled_evolve(x, torch.randn(2, 3, 49), backend=backend)
    with pytest.raises(ValueError, match="at least one early layer"):
        ops.sled_evolve(x, torch.randn(0, 3, 50), backend=backend)
    h = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"lm_head_weight must be \[>= 50, hidden\]"):
        ops.sled_evolve_from_hidden(x, h, torch.randn(49, 8), backend=backend)
    with pytest.raises(ValueError, match=r"early_hidden must be \[layers, batch, 8\]"):
        ops.sled_evolve_from_hidden(x, torch.randn(2, 3, 7), torch.randn(50, 8), backend=backend)
    with pytest.raises(ValueError, match=r"early_hidden must be \[layers, 3, hidden\]"):
        ops.sled_evolve_from_hidden(x, torch.randn(2, 2, 8), torch.randn(50, 8), backend=backend)
    with pytest.raises(ValueError, match="k must be whole numbers >= 1"):
        ops.sled_evolve_from_hidden(x, h, torch.randn(50, 8), k=0, backend=backend)
    with pytest.raises(ValueError, match="k must be whole numbers >= 1"):
        ops.sled_evolve(x, torch.randn(2, 3, 50), k=2.5, backend=backend)


@pytest.mark.parametrize(
    "backend",
    [
        "reference",
        "cpu",
        "triton",
    ],
)
def test_bad_per_row_parameters_raise_clear_errors(backend):
    need(backend)
    x = torch.randn(3, 50)
    early = torch.randn(2, 3, 50)
    with pytest.raises(ValueError, match=r"alpha must be a number or a \[3\] tensor"):
        ops.sled_evolve(x, early, alpha=torch.ones(2), backend=backend)
    with pytest.raises(ValueError, match=r"lower_bound must be a number or a \[3\] tensor"):
        ops.sled_evolve(x, early, lower_bound=torch.ones(3, 1), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_candidates_and_empty_batches(backend, gen):
    need(backend)
    x = torch.full((3, 9), -math.inf)
    x[1, 3] = math.nan
    x[2, 0] = math.inf
    got = ops.sled_evolve(x, make_early(2, 3, 9, gen), backend=backend)
    torch.testing.assert_close(got, x, rtol=0, atol=0, equal_nan=True)
    assert ops.sled_evolve(torch.randn(0, 9), torch.randn(2, 0, 9), backend=backend).shape == (0, 9)
    empty = ops.sled_evolve_from_hidden(torch.randn(0, 9), torch.randn(2, 0, 4), torch.randn(9, 4), backend=backend)
    assert empty.shape == (0, 9)


def test_device_k_with_max_k_needs_no_host_copy_and_gives_the_same_logits(gen):
    """The processor's form: k as a tensor on the logits' device plus its host-known maximum
    (no device sync); the same result as k validated on the host."""
    x = torch.randn(5, 300, generator=gen) * 2
    early = torch.randn(3, 5, 300, generator=gen) * 2
    k = torch.tensor([1, 4, 10, 2, 7])
    want = ops.sled_evolve(x, early, 1.5, k, -100.0, backend="cpu" if "cpu" in ops.available_backends() else "reference")
    for backend in [b for b in ops.available_backends() if b != "reference"]:
        got = ops.sled_evolve(x, early, 1.5, k, -100.0, max_k=10, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        wider = ops.sled_evolve(x, early, 1.5, k, -100.0, max_k=40, backend=backend)  # a loose bound is fine
        torch.testing.assert_close(wider, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_k"):
        ops.sled_evolve(x, early, 1.5, k, max_k=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_early_layer_with_a_masked_entry_gives_no_vote(backend, gen):
    """docs/algorithms.md §7: one early layer's row with a -inf entry where the final logit is
    finite has undefined cosines; that layer alone gives no vote, on every backend: SLED equals
    SLED over the other layers."""
    need(backend, 1000)
    x = torch.randn(3, 1000, generator=gen) * 2
    early = make_early(3, 3, 1000, gen)
    early[1, :, 17] = -math.inf
    got = ops.sled_evolve(x, early, 2.0, 10, backend=backend)
    without = ops.sled_evolve(x, early[[0, 2]], 2.0, 10, backend="reference")
    torch.testing.assert_close(got, without, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- the one-pass top-k


def tie_rows(batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Random rows and edge rows for the candidates: -inf entries, one-hot, uniform, logits on a
    coarse grid (many ties, some at the k-th place), ties at the very top, NaN, +inf, all -inf."""
    x = torch.randn(batch, vocab, generator=gen) * 2
    for r in range(batch):
        kind = r % 9
        if kind == 1:
            x[r, torch.rand(vocab, generator=gen) < 0.6] = -math.inf
        elif kind == 2:  # one-hot: one finite entry among -inf
            x[r] = -math.inf
            x[r, torch.randint(vocab, (1,), generator=gen)] = 3.0
        elif kind == 3:  # uniform
            x[r] = float(torch.randn(1, generator=gen))
        elif kind == 4:  # a coarse grid: ties everywhere, the k-th place too
            x[r] = (x[r] * 2).round() / 2
        elif kind == 5:  # the top few equal, then distinct values
            top = torch.randperm(vocab, generator=gen)[:min(vocab, 12)]
            x[r, top] = x[r].max() + 1
        elif kind == 6:
            x[r, torch.randint(vocab, (1,), generator=gen)] = math.nan
        elif kind == 7:
            x[r, torch.randint(vocab, (1,), generator=gen)] = math.inf
        elif kind == 8:
            x[r] = -math.inf
    return x


@pytest.mark.parametrize("width", [1, 10, 11, 64, 256])
@pytest.mark.parametrize("vocab", [7, 1000, 4097, 49152, 49999])
def test_one_pass_top_k_chooses_the_reference_candidates(vocab, width, gen):
    """The C++ candidates pass (sled_top_k_, through ops._sled_candidates) against torch.topk as
    reference.sled_evolve calls it, torch.topk(row, min(k, finite)): the same count and the same
    set on every row, ties at the k-th place included (those rows go to torch.topk), per-row k;
    the live candidates in descending order; every slot a valid token."""
    impl = ops._resolve("cpu", torch.device("cpu")) if "cpu" in ops.available_backends() else None
    if impl is None or impl.sled_top_k_ is None:
        pytest.skip("the C++ extension with sled_top_k_ is not built")
    width = min(width, vocab)
    batch = 27
    x = tie_rows(batch, vocab, gen)
    k = torch.randint(1, width + 1, (batch,), generator=gen)
    k[0] = width
    candidates, count = ops._sled_candidates(x, k, top_k_=impl.sled_top_k_)
    assert candidates.shape == (batch, width) and count.shape == (batch,)
    assert ((candidates >= 0) & (candidates < vocab)).all()
    for b in range(batch):
        row = x[b]
        finite = row > -math.inf
        if torch.isnan(row).any() or (row == math.inf).any() or not finite.any():
            assert int(count[b]) == 0, f"row {b}: a row left alone must have count 0"
            continue
        kb = min(int(k[b]), int(finite.sum()))
        assert int(count[b]) == kb, f"row {b}: count {int(count[b])}, want {kb}"
        got = candidates[b, :kb]
        want = torch.topk(row, kb).indices
        assert set(got.tolist()) == set(want.tolist()), f"row {b}: another top-{kb} set than torch.topk's"
        values = row[got]
        assert (values[:-1] >= values[1:]).all(), f"row {b}: candidates not in descending order"


def test_one_pass_top_k_evolves_like_the_reference_on_ties(gen):
    """Through the whole op: rows with ties at the k-th place evolve exactly the reference's
    candidates (check_sled compares with the reference only where the set is unambiguous)."""
    need("cpu", 4097)
    x = tie_rows(18, 4097, gen)
    early = make_early(2, 18, 4097, gen)
    k = torch.randint(1, 21, (18,), generator=gen)
    got = ops.sled_evolve(x, early, 2.0, k, -1000.0, backend="cpu")
    want = reference.sled_evolve(x, early, 2.0, k.float(), -1000.0)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, equal_nan=True)


def test_one_pass_top_k_bad_arguments_raise_clear_errors():
    impl = ops._resolve("cpu", torch.device("cpu")) if "cpu" in ops.available_backends() else None
    if impl is None or impl.sled_top_k_ is None:
        pytest.skip("the C++ extension with sled_top_k_ is not built")
    x = torch.randn(2, 300)
    k = torch.tensor([3, 3])
    count = torch.empty(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="candidates width"):
        impl.sled_top_k_(x, k, torch.empty(2, ops.SLED_FUSED_TOP_K + 1, dtype=torch.int64), count)
    with pytest.raises(RuntimeError, match="k must be"):
        impl.sled_top_k_(x, k.float(), torch.empty(2, 3, dtype=torch.int64), count)
    with pytest.raises(RuntimeError, match="count must be"):
        impl.sled_top_k_(x, k, torch.empty(2, 3, dtype=torch.int64), torch.empty(3, dtype=torch.int64))
