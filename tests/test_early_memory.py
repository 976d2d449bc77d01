"""The working memory of one SLED/DoLa processor step stays under ops.WORKING_MEMORY
(vLLM's memory profiling never runs logits processors). Measured with torch's profiler memory
events, as benchmarks/bench_early_memory.py does at full size (figures in the README)."""

import pytest

from benchmarks.bench_early_memory import peak_bytes
from real_vllm import ops

BUDGET = 24 * 2**20  # small, so the test is quick; the chunk sizes follow it


@pytest.mark.parametrize("method,layers", [("dola", 8), ("sled", 24)])
@pytest.mark.parametrize("mixed", [False, True])
def test_a_step_stays_under_the_working_memory_budget(monkeypatch, method, layers, mixed):
    monkeypatch.setattr(ops, "WORKING_MEMORY", BUDGET)
    batch, vocab = 64, 32000
    peak = peak_bytes(method, batch, vocab, layers, hidden=16, mixed=mixed)
    # what the step would hold without chunks: one [L, B, V] float32 tensor for DoLa (more than
    # 5 at once before), [L * B, 16384] float32 chunks for SLED
    assert peak <= BUDGET, f"{method}: {peak / 2**20:.1f} MiB > {BUDGET / 2**20:.0f} MiB"
    assert peak > BUDGET / 8, "the measurement saw nothing"
