"""The SLED/DoLa logits processor without an engine: a fake early-layer tap, V1 batch updates
and V2 slots, each row against the reference ops."""

from types import SimpleNamespace

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from real_vllm import ops, reference
from real_vllm.integration import early_models
from real_vllm.integration.tap import TAP, EarlyRows
from real_vllm.integration.early_processor import EarlyLayerLogitsProcessor
from tests.mrv2 import MRV2

V, H = 301, 16
TAPPED = (0, 1, 2, 3)
SLED_LAYERS, DOLA_LAYERS = [0, 2, 3], [1, 3]


def config():
    hf = SimpleNamespace(**{
        early_models.SLED_LAYERS: SLED_LAYERS, early_models.DOLA_LAYERS: DOLA_LAYERS,
        early_models.SLED_NORM: False, early_models.DOLA_NORM: True,
    })
    return SimpleNamespace(additional_config={"sampler": "sled"}, scheduler_config=SimpleNamespace(max_num_seqs=8),
                           model_config=SimpleNamespace(hf_config=hf))


def norm(h):
    return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def tap(rows, gen):
    hidden = torch.randn(len(TAPPED), rows, H, generator=gen)
    weight = torch.randn(V + 3, H, generator=gen)  # vLLM pads lm_head's rows
    TAP.rows = EarlyRows(TAPPED, hidden, norm=norm, weight=weight, scale=1.0)
    return hidden, weight


def expected(x, hidden, weight, params):
    args = params.extra_args or {}
    sampler = args.get("sampler", "sled")  # the server default here
    if sampler == "none":
        return x
    if sampler == "sled":
        early = hidden[list(SLED_LAYERS)] @ weight[:V].T
        return reference.sled_evolve(x[None], early[:, None], args.get("sled_alpha", 2.0), args.get("sled_k", 10))[0]
    early = norm(hidden[list(DOLA_LAYERS)]) @ weight[:V].T
    return reference.dola_contrast(x[None], early[:, None], args.get("dola_relative_top", 0.1),
                                   args.get("dola_divergence", "authors"))[0][0]


def p(**extra):
    return SamplingParams(extra_args=extra or None)


def check(proc, batch, gen, ctx=None, order=None):
    rows = len(batch) if order is None else len(order)
    x = torch.randn(rows, V, generator=gen) * 3
    hidden, weight = tap(rows, gen)
    out = proc.apply(x.clone(), ctx)
    for i in range(rows):
        params = batch[i] if order is None else batch[order[i]]
        want = expected(x[i], hidden[:, i], weight, params)
        torch.testing.assert_close(out[i], want, rtol=1e-4, atol=1e-4)
    assert TAP.rows is None, "the tap must be emptied every step"
    return out


def test_v1_mixed_batch_follows_moves():
    gen = torch.Generator().manual_seed(0)
    proc = EarlyLayerLogitsProcessor(config(), torch.device("cpu"), False)
    assert not proc.is_argmax_invariant()
    batch = [p(), p(sampler="none"), p(sampler="dola"), p(sampler="sled", sled_k=3, sled_alpha=0.5), p(sampler="dola", dola_relative_top=0.5)]
    proc.update_state(BatchUpdate(5, removed=[], added=[(i, q, [], []) for i, q in enumerate(batch)], moved=[]))
    check(proc, batch, gen)
    proc.update_state(BatchUpdate(4, removed=[1], added=[], moved=[(4, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    batch = [batch[0], batch[4], batch[2], batch[3]]
    check(proc, batch, gen)
    proc.update_state(BatchUpdate(4, removed=[], added=[], moved=[(0, 3, MoveDirectionality.SWAP)]))
    batch = [batch[3], batch[1], batch[2], batch[0]]
    check(proc, batch, gen)


def test_v2_slots():
    gen = torch.Generator().manual_seed(1)
    mrv2 = MRV2(max_num_reqs=8)
    proc = mrv2.build(EarlyLayerLogitsProcessor, config())
    requests = {"x": p(sampler="dola"), "y": p(sampler="none"), "z": p(sled_k=4)}
    for r, q in requests.items():
        mrv2.add_request(r, [3, 4, 5], q)
    assert [bool(mrv2.needs_processing[mrv2.slot(r)]) for r in requests] == [True, False, True]
    mrv2.apply_staged_writes()
    order = ["z", "x", "y"]
    by_slot = {mrv2.slot(r): q for r, q in requests.items()}
    check(proc, by_slot, gen, mrv2.context(order), [mrv2.slot(r) for r in order])


def test_without_a_tap_rows_are_left_alone_and_a_stale_tap_is_not_used():
    gen = torch.Generator().manual_seed(2)
    proc = EarlyLayerLogitsProcessor(config(), torch.device("cpu"), False)
    proc.update_state(BatchUpdate(2, removed=[], added=[(0, p(), [], []), (1, p(), [], [])], moved=[]))
    x = torch.randn(2, V, generator=gen)
    TAP.rows = None
    assert torch.equal(proc.apply(x.clone()), x)
    tap(3, gen)  # rows of another batch shape: not this step's
    assert torch.equal(proc.apply(x.clone()), x)
    assert TAP.rows is None


def test_rows_and_vocabulary_chunks_change_nothing(monkeypatch):
    # A working-memory budget of 1 byte: every row is its own chunk and SLED's lm_head GEMM
    # takes one vocabulary row at a time; the rows are not contiguous (plain rows between).
    batch = [p(), p(sampler="dola"), p(sampler="none"), p(sampler="dola", dola_divergence="jsd"), p(sled_k=3),
             p(sampler="dola", dola_relative_top=0.5), p(sampler="none"), p(sled_alpha=0.5)]
    proc = EarlyLayerLogitsProcessor(config(), torch.device("cpu"), False)
    proc.update_state(BatchUpdate(len(batch), removed=[], added=[(i, q, [], []) for i, q in enumerate(batch)], moved=[]))
    calls = []
    real_sled = ops.sled_evolve_from_hidden

    def counting(final, hidden, weight, *args, chunk, **kw):
        calls.append((final.shape[0], chunk))
        return real_sled(final, hidden, weight, *args, chunk=chunk, **kw)

    monkeypatch.setattr(ops, "sled_evolve_from_hidden", counting)
    unchunked = check(proc, batch, torch.Generator().manual_seed(3))
    assert calls == [(3, V)]
    calls.clear()
    monkeypatch.setattr(ops, "WORKING_MEMORY", 1)
    chunked = check(proc, batch, torch.Generator().manual_seed(3))
    assert calls == [(1, 1)] * 3
    torch.testing.assert_close(chunked, unchunked, rtol=1e-5, atol=1e-5)
