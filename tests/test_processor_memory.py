"""The processor keeps nothing of a finished request: after thousands of request lifetimes
(V1 adds/removes, V2 slot recycling; EDT, REAL, the cross-tokenizer path) the Python heap and
the number of live tensors are what they were after the first rounds. This is the plugin's
share of issue 6's "memory flat under load"; the load run measures the whole server."""

import gc
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.thf.runtime import SHIPPED_CHECKPOINT
from tests.mrv2 import MRV2
from tests.thf_fixtures import build_tiny_thf

SLOTS, STEPS, WARM_ROUNDS, ROUNDS = 8, 6, 40, 240
# Heap growth allowed between the warm rounds and the end: far below one request's state per
# round (a kept token list or TextHistory is >= 1 KB, so a leak adds >= 200 KB).
SLACK_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def thf_dir(tiny_model_dir, tmp_path_factory):
    return build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)


def config(tiny_model_dir, **extra):
    return SimpleNamespace(additional_config=extra, scheduler_config=SimpleNamespace(max_num_seqs=SLOTS),
                           model_config=SimpleNamespace(tokenizer=str(tiny_model_dir)))


def mixed_params(rng) -> SamplingParams:
    kind = rng.integers(4)
    if kind == 0:
        return SamplingParams()
    if kind == 1:
        return SamplingParams(extra_args={"sampler": "edt", "edt_t0": float(rng.uniform(0.5, 1.5))})
    return SamplingParams(extra_args={"sampler": "real" if kind == 2 else "edt+real",
                                      "real_decay_temperature": float(rng.uniform(0.3, 3.0))})


def live_tensors() -> int:
    # type(), not isinstance(): isinstance would touch lazy modules' proxies and import them.
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def heap_after(rounds, run_round) -> tuple[int, int]:
    for r in range(rounds):
        run_round(r)
    gc.collect()
    return tracemalloc.get_traced_memory()[0], live_tensors()


def assert_flat(run_round):
    tracemalloc.start()
    try:
        warm_heap, warm_tensors = heap_after(WARM_ROUNDS, run_round)
        end_heap, end_tensors = heap_after(ROUNDS - WARM_ROUNDS, lambda r: run_round(WARM_ROUNDS + r))
    finally:
        tracemalloc.stop()
    assert end_tensors <= warm_tensors, f"live tensors {warm_tensors} -> {end_tensors}"
    assert end_heap - warm_heap < SLACK_BYTES, f"heap grew {end_heap - warm_heap} bytes over {ROUNDS - WARM_ROUNDS} rounds"


@pytest.mark.parametrize("path", ["same-tokenizer", "retokenize"])
def test_v1_request_lifetimes_leave_nothing_behind(tiny_model_dir, thf_dir, path):
    extra = {"real_thf": str(thf_dir)} if path == "same-tokenizer" else {"real_thf": str(SHIPPED_CHECKPOINT), "real_retokenize": True}
    proc = RealVllmLogitsProcessor(config(tiny_model_dir, **extra), torch.device("cpu"), False)
    vocab, rng = 1000, np.random.default_rng(0)

    def run_round(r):
        outputs = [[] for _ in range(SLOTS)]
        added = [(i, mixed_params(rng), rng.integers(3, vocab, 30 + r % 50).tolist(), outputs[i]) for i in range(SLOTS)]
        proc.update_state(BatchUpdate(SLOTS, removed=[], added=added, moved=[]))
        for _ in range(STEPS):
            proc.apply(torch.randn(SLOTS, vocab))
            for out in outputs:
                out.append(int(rng.integers(3, vocab)))
        proc.update_state(BatchUpdate(0, removed=list(range(SLOTS)), added=[], moved=[]))

    assert_flat(run_round)
    assert all(t is None for t in proc.slots.tokens)


def test_v2_slot_recycling_leaves_nothing_behind(tiny_model_dir, thf_dir):
    vocab = 1000
    mrv2 = MRV2(max_num_reqs=SLOTS, max_model_len=256, vocab_size=vocab)
    mrv2.build(RealVllmLogitsProcessor, config(tiny_model_dir, real_thf=str(thf_dir)))
    rng = np.random.default_rng(1)

    def run_round(r):
        req_ids = [f"{r}-{i}" for i in range(SLOTS)]
        for req_id in req_ids:  # V2 reuses the slots of finished requests
            mrv2.add_request(req_id, rng.integers(3, vocab, 20 + r % 100).tolist(), mixed_params(rng))
        mrv2.apply_staged_writes()
        for _ in range(STEPS):
            mrv2.apply(torch.randn(SLOTS, vocab), mrv2.context(req_ids))
            for req_id in req_ids:
                mrv2.commit(req_id, [int(rng.integers(3, vocab))])
        for req_id in req_ids:
            mrv2.remove_request(req_id)

    assert_flat(run_round)
