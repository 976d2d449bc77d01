"""The ops on a CUDA device, end to end (make gpu-check runs this on a GPU machine).

Whole ops on CUDA tensors (the glue around the kernels too: top-k, merges, per-row parameters)
against the reference on the CPU; and every op a processor step calls, captured in a CUDA graph
at fixed shapes and replayed on new inputs: a capture fails on any host sync, so it proves the
step makes none. Without CUDA every test here is skipped (tests/test_ops.py and
tests/test_sled_ops.py run the same kernels under the Triton interpreter, and on a CUDA machine
natively too).
"""

import math

import pytest
import torch

import real_vllm.ops as ops
from real_vllm import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)")

SHAPES = [(1, 32001), (7, 49152), (256, 151936)]


def logits_with_edge_rows(batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(batch, vocab, generator=gen) * torch.empty(batch, 1).uniform_(0.5, 6.0, generator=gen)
    for r in range(batch):
        if r % 5 == 1:
            x[r, torch.rand(vocab, generator=gen) < 0.3] = -math.inf
        elif r % 5 == 2:
            x[r] = -math.inf
            x[r, r % vocab] = 2.0
        elif r % 5 == 3:
            x[r] = 0.5
    return x


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("shape", SHAPES)
def test_row_ops_on_cuda_match_the_reference(shape, gen):
    x = logits_with_edge_rows(*shape, gen)
    t0 = torch.empty(shape[0]).uniform_(0.3, 1.5, generator=gen)
    theta = torch.empty(shape[0]).uniform_(0.0, 3.0, generator=gen)
    p = torch.empty(shape[0]).uniform_(0.3, 0.99, generator=gen)
    dev = x.cuda()
    torch.testing.assert_close(ops.entropy(dev).cpu(), reference.entropy(x), rtol=1e-4, atol=2e-4)
    t = ops.edt_temperature(dev, t0.cuda(), 0.8, theta.cuda()).cpu()
    torch.testing.assert_close(t, reference.edt_temperature(x, t0, 0.8, theta, 1e-5), rtol=2e-4, atol=1e-7)
    scaled, _ = ops.apply_edt(dev, t0.cuda(), 0.8, theta.cuda())
    torch.testing.assert_close(scaled.cpu(), reference.apply_temperature(x, t), rtol=2e-4, atol=1e-5)
    kept = ops.top_p_mask(dev, p.cuda()).cpu() > -math.inf
    want = reference.top_p_mask(x, p) > -math.inf
    # Rows whose boundary sits within float32 rounding of p may differ by that token alone.
    assert (kept != want).sum(dim=1).max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_sled_from_hidden_on_cuda_matches_the_reference(dtype, k, gen):
    layers, batch, hidden, vocab = 3, 5, 576, 49152
    x = logits_with_edge_rows(batch, vocab, gen)
    h = torch.randn(layers, batch, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * 0.05
    got = ops.sled_evolve_from_hidden(x.cuda(), h.cuda().to(dtype), w.cuda().to(dtype), 2.0, k).cpu()
    early = (h.to(dtype).float().reshape(-1, hidden) @ w.to(dtype).float().T).reshape(layers, batch, vocab)
    want = ops.sled_evolve(x, early, 2.0, k, backend="cpu" if "cpu" in ops.available_backends() else "reference")
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def captured(step, inputs):
    """step(*inputs) captured in a CUDA graph (after a warm-up on a side stream, as torch asks),
    and a function that replays it on new values copied into the captured inputs."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(*[t.clone() for t in inputs])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(*inputs)

    def replay(*values):
        for t, v in zip(inputs, values):
            t.copy_(v)
        graph.replay()
        torch.cuda.synchronize()
        return out

    return replay


def test_a_processor_step_captures_in_a_cuda_graph(gen):
    """EDT, REAL's nucleus, SLED (k on the device with its host-known bound, as the processor
    passes it) and DoLa, at fixed shapes: captured, then replayed on fresh logits and compared
    with eager calls."""
    batch, vocab, layers, hidden = 8, 32001, 2, 256
    dev = torch.device("cuda")
    x = torch.randn(batch, vocab, device=dev)
    t0, n, theta = (torch.full((batch,), v, device=dev) for v in (0.9, 0.8, 1.0))
    p = torch.full((batch,), 0.9, device=dev)
    k = torch.tensor([10] * batch, device=dev)
    alpha, lower = torch.full((batch,), 2.0, device=dev), torch.full((batch,), -1000.0, device=dev)
    h = torch.randn(layers, batch, hidden, device=dev, dtype=torch.bfloat16)
    w = torch.randn(vocab, hidden, device=dev, dtype=torch.bfloat16) * 0.05
    early = torch.randn(layers, batch, vocab, device=dev)
    top = torch.full((batch,), 0.1, device=dev)

    def step(logits, hidden_states, early_logits):
        ops.apply_edt(logits, t0, n, theta, inplace=True)
        ops.top_p_mask(logits, p, inplace=True)
        evolved = ops.sled_evolve_from_hidden(logits.clone(), hidden_states, w, alpha, k, lower, max_k=10,
                                              inplace=True)
        scores, layer = ops.dola_contrast(logits, early_logits, top)
        return logits, evolved, scores, layer

    replay = captured(step, [x.clone(), h.clone(), early.clone()])
    for _ in range(2):
        fresh = [torch.randn_like(x) * 3, torch.randn_like(h), torch.randn_like(early)]
        got = replay(*fresh)
        want = step(*[t.clone() for t in fresh])
        for g, e in zip(got, want):
            if g.is_floating_point():
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(g, e)
