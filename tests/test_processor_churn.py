"""Batch churn, property-based: random sequences of vLLM batch updates (V1: removes, adds,
one-way moves, swaps; V2: vLLM's own request slots, recycled, with draft rows) with random per-request parameters. After
every step each row must get exactly its own request's transform (the reference op, row by
row)."""

from types import SimpleNamespace

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from real_vllm import reference
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods.edt import MIN_SCALE
from tests.mrv2 import MRV2

MAX_REQS, VOCAB = 8, 257

request_params = st.one_of(
    st.just(SamplingParams()),
    st.builds(
        lambda t0, n, theta: SamplingParams(extra_args={"sampler": "edt", "edt_t0": t0, "edt_n": n, "edt_theta": theta}),
        st.floats(0.05, 3.0), st.floats(0.05, 0.95), st.floats(0.0, 4.0),
    ),
)


def config():
    return SimpleNamespace(additional_config={}, scheduler_config=SimpleNamespace(max_num_seqs=MAX_REQS),
                           model_config=SimpleNamespace(tokenizer=None))


def expected(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    rows = []
    for row, p in zip(logits, params):
        args = p.extra_args or {}
        if args.get("sampler") == "edt":
            row, _ = reference.apply_edt(row[None], args["edt_t0"], args["edt_n"], args["edt_theta"], MIN_SCALE)
            row = row[0]
        rows.append(row)
    return torch.stack(rows) if rows else logits


def check(out, logits, params):
    want = expected(logits, params)
    torch.testing.assert_close(out, want, rtol=2e-4, atol=1e-6, equal_nan=True)
    for i, p in enumerate(params):
        if not p.extra_args:
            assert torch.equal(out[i], logits[i]), f"plain row {i} was touched"


class V1Churn(RuleBasedStateMachine):
    """The V1 persistent batch: rows [0, n) always occupied, updates as vLLM sends them."""

    def __init__(self):
        super().__init__()
        self.proc = RealVllmLogitsProcessor(config(), torch.device("cpu"), False)
        self.batch: list[SamplingParams] = []

    @precondition(lambda self: len(self.batch) < MAX_REQS)
    @rule(new=st.lists(request_params, min_size=1, max_size=3))
    def add(self, new):
        new = new[: MAX_REQS - len(self.batch)]
        start = len(self.batch)
        self.batch += new
        self.proc.update_state(BatchUpdate(len(self.batch), removed=[], added=[(start + i, p, [], []) for i, p in enumerate(new)], moved=[]))

    @precondition(lambda self: self.batch)
    @rule(data=st.data())
    def remove_and_condense(self, data):
        n = len(self.batch)
        removed = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
        keep = [i for i in range(n) if i not in removed]
        # Condense as vLLM does: the last survivors move one way into the lowest holes.
        holes = [i for i in removed if i < len(keep)]
        tail = [i for i in keep if i >= len(keep)]
        moved = [(src, hole, MoveDirectionality.UNIDIRECTIONAL) for hole, src in zip(holes, reversed(tail))]
        new_batch = [self.batch[i] if i < len(keep) else None for i in range(len(keep))]
        for src, hole, _ in moved:
            new_batch[hole] = self.batch[src]
        self.batch = new_batch
        self.proc.update_state(BatchUpdate(len(self.batch), removed=removed, added=[], moved=moved))

    @precondition(lambda self: len(self.batch) >= 2)
    @rule(data=st.data())
    def swap(self, data):
        a, b = data.draw(st.lists(st.integers(0, len(self.batch) - 1), min_size=2, max_size=2, unique=True))
        self.batch[a], self.batch[b] = self.batch[b], self.batch[a]
        self.proc.update_state(BatchUpdate(len(self.batch), removed=[], added=[], moved=[(a, b, MoveDirectionality.SWAP)]))

    @rule(new=request_params, data=st.data())
    def replace(self, new, data):
        """An added request may take the index of one that left in the same update."""
        if not self.batch:
            return
        i = data.draw(st.integers(0, len(self.batch) - 1))
        self.batch[i] = new
        self.proc.update_state(BatchUpdate(len(self.batch), removed=[i], added=[(i, new, [], [])], moved=[]))

    @invariant()
    def each_row_gets_its_own_transform(self):
        self.proc.update_state(None)
        logits = torch.randn(len(self.batch), VOCAB) * 3
        check(self.proc.apply(logits.clone()), logits, self.batch)


class V2Churn(RuleBasedStateMachine):
    """Model Runner V2 (its own RequestState, tests/mrv2.py): slots are recycled through its
    free list; each step maps rows to slots anew, a request owning 1 + its drafts rows."""

    def __init__(self):
        super().__init__()
        self.mrv2 = MRV2(max_num_reqs=MAX_REQS, max_model_len=64, vocab_size=VOCAB)
        self.mrv2.build(RealVllmLogitsProcessor, config())
        self.live: dict[str, SamplingParams] = {}
        self.added = 0

    @precondition(lambda self: len(self.live) < MAX_REQS)
    @rule(params=request_params)
    def add(self, params):
        req_id = str(self.added)
        self.added += 1
        self.live[req_id] = params  # a recycled slot must forget its previous occupant
        self.mrv2.add_request(req_id, [3, 4, 5], params)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        req_id = data.draw(st.sampled_from(sorted(self.live)))
        del self.live[req_id]
        self.mrv2.remove_request(req_id)

    @invariant()
    def each_row_gets_its_own_transform(self):
        self.mrv2.apply_staged_writes()
        order = list(np.random.default_rng(len(self.live)).permutation(sorted(self.live)))
        drafts = {r: [7] * (int(r) % 4) for r in order}  # 0-3 draft rows per request
        rows = [r for r in order for _ in range(len(drafts[r]) + 1)]
        logits = torch.randn(len(rows), VOCAB) * 3
        check(self.mrv2.apply(logits, self.mrv2.context(order, drafts)), logits, [self.live[r] for r in rows])


TestV1Churn = V1Churn.TestCase
TestV1Churn.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestV2Churn = V2Churn.TestCase
TestV2Churn.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
