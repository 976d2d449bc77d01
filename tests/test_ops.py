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


def assert_same_nucleus(kept: torch.Tensor, logits: torch.Tensor, top_p: torch.Tensor):
    """kept must equal the oracle's nucleus, except for tokens whose mass-before sits within
    float32 rounding of p (there, either answer is a correct float32 nucleus)."""
    mass_before = oracle.nucleus_mass_before64(logits)
    want = mass_before < top_p.double().unsqueeze(1)
    want |= logits == logits.max(dim=1, keepdim=True).values  # top-1 always kept
    want &= logits > -math.inf
    want |= (top_p >= 1).unsqueeze(1) & (logits > -math.inf)
    ambiguous = (mass_before - top_p.double().unsqueeze(1)).abs() < 1e-5
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
