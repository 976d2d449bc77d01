"""The logits processor without an engine: V1 batch updates and V2 slots, row by row
against the reference op, mixed with plain rows, requests joining and leaving."""

from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from real_vllm import reference
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods.edt import MIN_SCALE
from tests.mrv2 import MRV2

V = 1037


def config(**additional):
    return SimpleNamespace(additional_config=additional, scheduler_config=SimpleNamespace(max_num_seqs=16),
                           model_config=SimpleNamespace(tokenizer=None))


def expected_row(row: torch.Tensor, params: SamplingParams, default: str = "none") -> torch.Tensor:
    args = params.extra_args or {}
    if args.get("sampler", default) != "edt":
        return row
    _, t = reference.apply_edt(row[None], args.get("edt_t0", 1.0), args.get("edt_n", 0.8), args.get("edt_theta", 1.0), MIN_SCALE)
    return row / t


def edt(**kw):
    return SamplingParams(extra_args={"sampler": "edt", **kw})


PLAIN = SamplingParams()


def test_v1_mixed_batch_changes_only_edt_rows_and_follows_moves():
    proc = RealVllmLogitsProcessor(config(), torch.device("cpu"), False)
    batch = [edt(edt_t0=0.7, edt_theta=2.0), PLAIN, edt(edt_t0=1.4, edt_n=0.5), PLAIN]
    proc.update_state(BatchUpdate(4, removed=[], added=[(i, p, [], []) for i, p in enumerate(batch)], moved=[]))

    def check(rows):
        x = torch.randn(len(rows), V) * 3
        out = proc.apply(x.clone())
        for i, p in enumerate(rows):
            want = expected_row(x[i], p)
            torch.testing.assert_close(out[i], want, rtol=2e-4, atol=1e-6)
            if p is PLAIN:
                assert torch.equal(out[i], x[i]), "a plain row was touched"

    check(batch)
    proc.update_state(None)  # no change: same state
    check(batch)
    # Request 1 leaves, the last moves into its place, a new EDT request joins at 3, then a swap.
    proc.update_state(BatchUpdate(3, removed=[1], added=[], moved=[(3, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    batch = [batch[0], batch[3], batch[2]]
    check(batch)
    newcomer = edt(edt_t0=0.3, edt_theta=0.0)
    proc.update_state(BatchUpdate(4, removed=[], added=[(3, newcomer, [], [])], moved=[(0, 2, MoveDirectionality.SWAP)]))
    batch = [batch[2], batch[1], batch[0], newcomer]
    check(batch)


def test_v1_all_plain_batch_is_untouched_and_server_default_applies():
    proc = RealVllmLogitsProcessor(config(), torch.device("cpu"), False)
    proc.update_state(BatchUpdate(2, removed=[], added=[(0, PLAIN, [], []), (1, PLAIN, [], [])], moved=[]))
    x = torch.randn(2, V)
    original = x.clone()
    assert proc.apply(x) is x and torch.equal(x, original)

    served = RealVllmLogitsProcessor(config(sampler="edt", edt_t0=0.9), torch.device("cpu"), False)
    opt_out = SamplingParams(extra_args={"sampler": "none"})
    served.update_state(BatchUpdate(2, removed=[], added=[(0, PLAIN, [], []), (1, opt_out, [], [])], moved=[]))
    x = torch.randn(2, V)
    out = served.apply(x.clone())
    _, t = reference.apply_edt(x[:1], 0.9, 0.8, 1.0, MIN_SCALE)
    torch.testing.assert_close(out[0], x[0] / t, rtol=2e-4, atol=1e-6)
    assert torch.equal(out[1], x[1])


def test_bad_server_default_fails_at_startup():
    with pytest.raises(ValueError, match="edt_n"):
        RealVllmLogitsProcessor(config(sampler="edt", edt_n=2.0), torch.device("cpu"), False)
    with pytest.raises(ValueError, match="sampler"):
        RealVllmLogitsProcessor(config(sampler="nope"), torch.device("cpu"), False)


def test_v2_slots_and_row_mapping():
    mrv2 = MRV2(max_num_reqs=8)
    mrv2.build(RealVllmLogitsProcessor, config())
    by_req = {"x": edt(edt_t0=0.6, edt_theta=1.5), "y": PLAIN, "z": edt(edt_n=0.3)}
    for r, p in by_req.items():
        mrv2.add_request(r, [3, 4, 5], p)
        assert mrv2.needs_processing[mrv2.slot(r)] == (p is not PLAIN)
    mrv2.apply_staged_writes()
    order = ["z", "y", "x"]
    ctx = mrv2.context(order)
    x = torch.randn(3, V) * 2
    out = mrv2.apply(x, ctx)
    for i, r in enumerate(order):
        torch.testing.assert_close(out[i], expected_row(x[i], by_req[r]), rtol=2e-4, atol=1e-6)
    # A recycled slot takes its new occupant's parameters.
    slot = mrv2.slot("x")
    mrv2.remove_request("x")
    assert mrv2.add_request("w", [6, 7], PLAIN) == slot
    mrv2.apply_staged_writes()
    y = torch.randn(1, V)
    assert torch.equal(mrv2.apply(y, mrv2.context(["w"])), y)
