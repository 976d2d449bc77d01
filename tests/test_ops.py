"""Every op on every backend available here, against the reference and a float64 oracle.

Inputs are fresh random draws (no fixed seed: a failure prints the seed to rerun with
REAL_VLLM_TEST_SEED). Shapes include B = 1, odd sizes and vocabularies that are not powers
of two up to 151,936; edge rows: -inf entries, one-hot, uniform, sharply peaked, bf16.
"""

import math
import os
import random

import pytest
import torch

import real_vllm.ops as ops
from real_vllm import reference
from tests import oracle

SEED = int(os.environ.get("REAL_VLLM_TEST_SEED", random.randrange(2**31)))
FAST_BACKENDS = [b for b in ops.available_backends("cpu") if b != "reference"]
ALL_BACKENDS = ["reference", *FAST_BACKENDS]
SHAPES = [(1, 7), (3, 1000), (5, 4097), (4, 32000), (2, 49152), (2, 151936)]

# float32 entropy over up to 152k terms: a few ulps of ln V (12) per row.
ENTROPY_ATOL, ENTROPY_RTOL = 2e-4, 1e-4
TEMP_RTOL = 2e-4


def make_logits(batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Random rows with a spread of entropies, and the edge rows cycled into the batch."""
    scale = torch.empty(batch, 1).uniform_(0.1, 8.0, generator=gen)
    x = torch.randn(batch, vocab, generator=gen) * scale
    for r in range(batch):
        kind = r % 6
        if kind == 1:  # some tokens masked
            x[r, torch.rand(vocab, generator=gen) < 0.3] = -math.inf
        elif kind == 2 and vocab > 1:  # one-hot: a single finite logit
            x[r] = -math.inf
            x[r, torch.randint(vocab, (1,), generator=gen)] = 3.0
        elif kind == 3:  # uniform
            x[r] = 1.5
        elif kind == 4:  # sharply peaked
            x[r, torch.randint(vocab, (1,), generator=gen)] += 60.0
    return x


def params(batch: int, gen: torch.Generator):
    t0 = torch.empty(batch).uniform_(0.2, 2.0, generator=gen)
    n = torch.empty(batch).uniform_(0.05, 0.95, generator=gen)
    theta = torch.empty(batch).uniform_(0.0, 5.0, generator=gen)
    theta[::3] = 0.0
    return t0, n, theta


@pytest.fixture
def gen():
    g = torch.Generator().manual_seed(SEED)
    print(f"REAL_VLLM_TEST_SEED={SEED}")
    return g


def assert_same_nucleus(kept: torch.Tensor, logits: torch.Tensor, top_p: torch.Tensor, margin: float = 1e-5):
    """kept must equal the oracle's nucleus (the smallest set, ties broken lowest index
    first), except for tokens whose mass-before sits within float32 rounding of p (there,
    either answer is a correct float32 nucleus)."""
    mass_before = oracle.nucleus_mass_before64(logits)
    want = mass_before < top_p.double().unsqueeze(1)
    want |= oracle.nucleus_first64(logits)  # top-1 always kept
    want &= logits > -math.inf
    want |= (top_p >= 1).unsqueeze(1) & (logits > -math.inf)
    ambiguous = (mass_before - top_p.double().unsqueeze(1)).abs() < margin
    wrong = (kept != want) & ~ambiguous
    assert not wrong.any(), f"nucleus differs at {wrong.nonzero()[:5].tolist()}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_entropy(backend, shape, gen):
    x = make_logits(*shape, gen)
    got = ops.entropy(x, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    torch.testing.assert_close(got.double(), oracle.entropy64(x), atol=ENTROPY_ATOL, rtol=ENTROPY_RTOL)
    torch.testing.assert_close(got, reference.entropy(x), atol=ENTROPY_ATOL, rtol=ENTROPY_RTOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_edt_temperature(backend, shape, gen):
    x = make_logits(*shape, gen)
    t0, n, theta = params(shape[0], gen)
    got = ops.edt_temperature(x, t0, n, theta, backend=backend)
    want = oracle.edt_temperature64(x, t0, n, theta)
    torch.testing.assert_close(got.double(), want, rtol=TEMP_RTOL, atol=1e-9)
    # theta = 0 is plain temperature t0, bit for bit, on every kind of row.
    zero = theta == 0
    assert torch.equal(got[zero], t0[zero])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_apply_temperature_is_a_true_division(backend, shape, gen):
    x = make_logits(*shape, gen)
    original = x.clone()
    t = torch.empty(shape[0]).uniform_(0.05, 3.0, generator=gen)
    got = ops.apply_temperature(x, t, backend=backend)
    # Bit-identical to vLLM's own temperature step (a float32 division).
    assert torch.equal(got, x / t.unsqueeze(1))
    assert torch.equal(x, original), "out-of-place apply_temperature changed its input"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_apply_edt(backend, shape, gen):
    x = make_logits(*shape, gen)
    t0, n, theta = params(shape[0], gen)
    original = x.clone()
    out, t = ops.apply_edt(x, t0, n, theta, backend=backend)
    assert torch.equal(x, original), "out-of-place apply_edt changed its input"
    want_t = oracle.edt_temperature64(x, t0, n, theta)
    torch.testing.assert_close(t.double(), want_t, rtol=TEMP_RTOL, atol=1e-9)
    # The scaling pass divides by the temperature the stats pass produced.
    assert torch.equal(out, x / t.unsqueeze(1))
    # In place on contiguous float32 logits gives the same result.
    y = x.clone()
    _, t_inplace = ops.apply_edt(y, t0, n, theta, inplace=True, backend=backend)
    assert torch.equal(y, out) and torch.equal(t_inplace, t)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_top_p_mask(backend, shape, gen):
    x = make_logits(*shape, gen)
    top_p = torch.empty(shape[0]).uniform_(0.0, 1.0, generator=gen)
    top_p[-1] = 1.0
    if shape[0] > 2:
        top_p[0] = 0.0
    got = ops.top_p_mask(x, top_p, backend=backend)
    kept = got > -math.inf
    assert torch.equal(got[kept], x[kept]), "kept logits must be unchanged"
    assert_same_nucleus(kept, x, top_p)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bf16_and_fp16_input_computed_in_fp32(backend, gen):
    for dtype in (torch.bfloat16, torch.float16):
        x = make_logits(3, 5003, gen).to(dtype)
        x32 = x.float()
        torch.testing.assert_close(ops.entropy(x, backend=backend), reference.entropy(x32), atol=ENTROPY_ATOL, rtol=ENTROPY_RTOL)
        out, t = ops.apply_edt(x, 0.9, 0.8, 1.0, backend=backend)
        assert out.dtype == torch.float32
        torch.testing.assert_close(t, reference.edt_temperature(x32, 0.9, 0.8, 1.0), rtol=TEMP_RTOL, atol=0)
        with pytest.raises(ValueError, match="inplace"):
            ops.apply_edt(x, 0.9, inplace=True, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_finite_rows_follow_the_documented_policy(backend):
    v = 1031
    x = torch.randn(4, v)
    x[0, 5] = math.nan  # NaN: stays visible
    x[1, 7] = math.inf  # +inf: softmax undefined, treated like NaN
    x[2] = -math.inf  # nothing left to sample
    h = ops.entropy(x, backend=backend)
    assert h[:2].isnan().all() and h[2] == 0 and h[3].isfinite()
    out, t = ops.apply_edt(x, 0.7, 0.8, 1.0, backend=backend)
    assert t[:2].isnan().all() and out[:2].isnan().any(dim=1).all()
    assert (out[2] == -math.inf).all() and t[2] == pytest.approx(0.7e-5)
    # theta = 0 is plain temperature t0 on every row; the NaN stays in the row.
    out, t = ops.apply_edt(x, 0.7, 0.8, 0.0, backend=backend)
    assert torch.equal(t, torch.full((4,), 0.7)) and out[0].isnan().any()
    masked = ops.top_p_mask(x, 0.5, backend=backend)
    assert torch.equal(masked[:3].nan_to_num(), x[:3].nan_to_num()), "non-finite rows left alone"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scalar_and_tensor_parameters_agree(backend, gen):
    x = make_logits(5, 3001, gen)
    a = ops.edt_temperature(x, 0.8, 0.6, 2.0, backend=backend)
    b = ops.edt_temperature(x, torch.full((5,), 0.8), torch.full((5,), 0.6), torch.full((5,), 2.0), backend=backend)
    assert torch.equal(a, b)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="the C++ extension real_vllm._C is not built")
@pytest.mark.parametrize("vocab", [1000, 40001, 151936])
def test_cpu_edt_is_bit_identical_alone_in_a_batch_and_on_any_thread_count(vocab, gen):
    """The C++ EDT splits the stats pass of rows fewer than the threads across the threads
    (one item per 16,384-logit segment, merged in order) and otherwise reads each row's stats
    while dividing the row before it: neither may change a row's T or output by one bit."""
    batch = 7
    x = make_logits(batch, vocab, gen)
    x[0, -3] += 50.0  # a max in the last segment: every earlier segment is rebased onto it
    x[5, vocab // 2] = math.nan  # a NaN mid-row: T NaN, the whole row NaN after the division
    t0, n, theta = params(batch, gen)
    theta[0] = 1.5
    theta[5] = 2.0
    threads = torch.get_num_threads()
    runs = {}
    try:
        # 1: one row per item; 2: lone rows split in two; 8: the whole batch split.
        for count in (1, 2, 8):
            torch.set_num_threads(count)
            runs[count] = (ops.apply_edt(x, t0, n, theta, backend="cpu"),
                           ops.edt_temperature(x, t0, n, theta, backend="cpu"),
                           [ops.apply_edt(x[r:r + 1], t0[r:r + 1], n[r:r + 1], theta[r:r + 1], backend="cpu")
                            for r in range(batch)])
    finally:
        torch.set_num_threads(threads)
    (out, t), _, _ = runs[1]
    torch.testing.assert_close(t.double(), oracle.edt_temperature64(x, t0, n, theta), rtol=TEMP_RTOL, atol=1e-9, equal_nan=True)
    assert t[5].isnan() and out[5].isnan().all() and not out[[1, 2, 4]].isnan().any()
    assert_same_bits(out, x / t.unsqueeze(1), "batched output vs x / T")
    for count, ((out_c, t_c), t_only, alone) in runs.items():
        assert_same_bits(t_c, t, f"batched T on {count} threads")
        assert_same_bits(t_only, t, f"edt_temperature on {count} threads")
        assert_same_bits(out_c, out, f"batched output on {count} threads")
        for r, (out_r, t_r) in enumerate(alone):
            assert_same_bits(t_r, t[r:r + 1], f"row {r} alone, T, on {count} threads")
            assert_same_bits(out_r, out[r:r + 1], f"row {r} alone, output, on {count} threads")


def far_below_rows(vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Rows whose entries mostly sit far (30-200 nats) below the max, which the C++ stats pass
    skips 64 at a time when a whole group is 36+ nats below the running max: every group but
    one skipped, the max arriving late (earlier groups kept against a lower running max), a
    tail just above and just below the skip line, and -inf mixed in."""
    rows = torch.randn(6, vocab, generator=gen) - 200.0
    start = (vocab // 2) // 64 * 64
    rows[0, start:start + 64] = torch.randn(64, generator=gen)  # every group but one skipped
    rows[1, :] = torch.randn(vocab, generator=gen) * 0.5 - 40.0
    rows[1, -1] = 0.0  # a max in the last entry: the groups before it were kept at m = -40
    rows[2, :] = -35.9  # just inside the skip line, against the max below
    rows[2, ::97] = -36.1  # just outside it
    rows[2, vocab // 3] = 0.0
    rows[3, :] = -math.inf
    rows[3, 5] = 1.0
    rows[3, 64:vocab:3] = -30.0  # terms that still count, among masked tokens
    rows[4, :] = torch.linspace(-300.0, 0.0, vocab)  # every distance from the max
    rows[5, : vocab // 2] = -math.inf
    rows[5, -7] = 2.0
    return rows


@pytest.mark.parametrize("vocab", [70, 4097, 49152, 151936])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rows_far_below_the_max(backend, vocab, gen):
    x = far_below_rows(vocab, gen)
    torch.testing.assert_close(ops.entropy(x, backend=backend).double(), oracle.entropy64(x),
                               atol=ENTROPY_ATOL, rtol=ENTROPY_RTOL)
    t0 = torch.full((x.shape[0],), 0.9)
    n = torch.full((x.shape[0],), 0.8)
    theta = torch.full((x.shape[0],), 1.0)
    out, t = ops.apply_edt(x, t0, n, theta, backend=backend)
    torch.testing.assert_close(t.double(), oracle.edt_temperature64(x, t0, n, theta), rtol=TEMP_RTOL, atol=1e-9)
    assert_same_bits(out, x / t.unsqueeze(1), "output vs x / T")


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="the C++ extension real_vllm._C is not built")
def test_cpu_division_is_torchs_on_every_significand(gen):
    """The C++ division (on AVX-512 a reciprocal with an exact correction, not vdivps) equals
    torch's x / t bit for bit: every float32 significand of x, both signs, two binades, for
    t near and far from powers of two, including tiny EDT temperatures; and on 0, -0,
    +-inf, NaN, subnormal, tiny and huge x, where it falls back to the divider."""
    significands = torch.arange(1 << 23, dtype=torch.int32)
    x = torch.cat([(significands | (e << 23)).view(torch.float32) for e in (127, 200)])
    x = torch.cat([x, -x]).reshape(1, -1)
    ts = [1.0, 0.9, 0.7, 3.0, 2.0 ** -40, float.fromhex("0x1.fffffep-1"), float.fromhex("0x1.000002p+0"),
          0.9e-5, *torch.empty(8).uniform_(0.05, 3.0, generator=gen).tolist()]
    special = torch.tensor([[0.0, -0.0, math.inf, -math.inf, math.nan, 1e-40, 1e-30, 3e38, -3e38, 1e30, 5.0] * 7])
    for t in ts:
        tt = torch.tensor([t])
        for values in (x, special):
            want = values / tt
            got = ops.apply_temperature(values, tt, backend="cpu")
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"t = {t!r}"
    # apply_edt's fused loop divides row r by its T while it reads row r + 1's stats (one
    # thread: rows fewer than the threads would be split across them instead).
    rows = x.expand(3, -1).contiguous()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out, t = ops.apply_edt(rows, torch.tensor([0.9, 0.5, 2.0]), 0.8, 1.0, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    want = rows / t.unsqueeze(1)
    assert torch.equal(out.view(torch.int32), want.view(torch.int32)), f"apply_edt, T = {t.tolist()}"
    # the divider's fallback for a temperature out of the reciprocal's range
    for t in (1e-30, 1e30):
        want = special / t
        got = ops.apply_temperature(special, torch.tensor([t]), backend="cpu")
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"t = {t!r}"


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="backend"):
        ops.entropy(x, backend="gpu-magic")
    with pytest.raises(ops.BackendUnavailable, match="cuda"):
        ops.entropy(x, backend="cuda")
    with pytest.raises(ValueError, match=r"t0 must be a number or a \[2\] tensor"):
        ops.edt_temperature(x, torch.ones(3))
    with pytest.raises(TypeError, match="temperature"):
        ops.apply_temperature(x, "hot")
    with pytest.raises(ValueError, match="batch, vocab"):
        ops.entropy(torch.randn(10))


# --------------------------------------------------------------------------- nucleus ties
#
# The nucleus is the smallest set (docs/algorithms.md §3): of the tokens tied with the
# crossing token only as many as the mass needs are kept, the lowest indices first. bf16
# logits tie often; small integers tie everywhere.

TIED_SHAPES = [(6, 1000), (5, 4097), (3, 32000), (2, 151936)]


def tied_logits(kind: str, batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "bf16":  # Gaussian logits rounded to bf16 (8 bits of mantissa)
        scale = torch.empty(batch, 1).uniform_(1.0, 6.0, generator=gen)
        x = (torch.randn(batch, vocab, generator=gen) * scale).bfloat16().float()
    else:  # integers in [-6, 2]: exact ties at every value
        x = torch.randint(-6, 3, (batch, vocab), generator=gen).float()
        x[0] = 1.0  # one value only: the whole row is tied with the top-1
    x[1, torch.rand(vocab, generator=gen) < 0.3] = -math.inf
    return x


def tie_rows(kept: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows where some token tied with the least kept logit was dropped."""
    tau = torch.where(kept, x, torch.full_like(x, math.inf)).min(dim=1, keepdim=True).values
    return ((x == tau) & ~kept).any(dim=1)


@pytest.mark.parametrize("kind", ["bf16", "int"])
@pytest.mark.parametrize("shape", TIED_SHAPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_top_p_mask_breaks_ties_lowest_index_first(backend, shape, kind, gen):
    x = tied_logits(kind, *shape, gen)
    top_p = torch.empty(shape[0]).uniform_(0.05, 0.95, generator=gen)
    top_p[-1] = 0.0  # the top-1 alone: the lowest index among the maxima
    got = ops.top_p_mask(x, top_p, backend=backend)
    kept = got > -math.inf
    assert torch.equal(got[kept], x[kept]), "kept logits must be unchanged"
    assert_same_nucleus(kept, x, top_p)
    assert kept[-1].sum() == 1 and kept[-1, x[-1].argmax()]
    want = reference.top_p_mask(x, top_p) > -math.inf
    mass_before = oracle.nucleus_mass_before64(x)
    ambiguous = (mass_before - top_p.double().unsqueeze(1)).abs() < 1e-5
    assert not ((kept != want) & ~ambiguous).any(), "differs from the reference"
    if kind == "int":
        assert tie_rows(want, x).sum() >= shape[0] - 2, "the data must exercise tie-breaking"


def _vllm_top_p(x: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    return apply_top_k_top_p(x.clone(), None, top_p.clone()) > -math.inf


@pytest.mark.parametrize("kind", ["bf16", "int"])
@pytest.mark.parametrize("shape", [(8, 1000), (4, 32000), (2, 151936)])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_top_p_mask_equals_vllm_top_p_row_for_row(backend, shape, kind, gen, monkeypatch):
    """vLLM's own sort-based top-p (apply_top_k_top_p, a torch path on CPU): the same set on
    every row, up to which of the tied tokens survive, since torch's default sort is not
    stable; with a stable sort on index-reversed rows (so its survivors among ties are the
    lowest indices, as in vLLM's Triton kernels) the same set index for index. Tokens whose
    float64 mass-before is within vLLM's float32 cumsum rounding of p are not compared."""
    x = tied_logits(kind, *shape, gen)
    top_p = torch.empty(shape[0]).uniform_(0.05, 0.95, generator=gen)
    mass_before = oracle.nucleus_mass_before64(x)
    ambiguous = (mass_before - top_p.double().unsqueeze(1)).abs() < 1e-4
    ours = ops.top_p_mask(x, top_p, backend=backend) > -math.inf
    want = reference.top_p_mask(x, top_p) > -math.inf
    tau = torch.where(want, x, torch.full_like(x, math.inf)).min(dim=1, keepdim=True).values
    tied = x == tau
    theirs = _vllm_top_p(x, top_p)
    assert not ((ours != theirs) & ~ambiguous & ~tied).any(), "differs from vLLM off the tie"
    for r in range(shape[0]):
        if not (ambiguous[r] & tied[r]).any():
            assert (ours[r] & tied[r]).sum() == (theirs[r] & tied[r]).sum(), f"row {r}: tied count"
    # Index for index: vLLM's code with its sort made stable, on rows in reverse index order.
    real_sort = torch.Tensor.sort
    monkeypatch.setattr(
        torch.Tensor, "sort",
        lambda t, dim=-1, descending=False: real_sort(t, dim=dim, descending=descending, stable=True),
    )
    theirs = _vllm_top_p(x.flip(-1), top_p).flip(-1)
    assert not ((ours != theirs) & ~ambiguous).any(), "differs from vLLM's index order"
    if kind == "int":
        assert tie_rows(ours, x).sum() >= shape[0] - 2, "the data must exercise tie-breaking"
