"""Peak working memory of one SLED or DoLa step of the early-layer logits processor, on CPU.

vLLM's memory profiling does not run logits processors, so what a SLED/DoLa step allocates
comes out of the memory vLLM leaves free; real_vllm bounds it by ops.WORKING_MEMORY. This
drives EarlyLayerLogitsProcessor.apply on a fake early-layer tap (random hidden states and
lm_head weight, as tests/test_early_processor.py does) and reads the peak of the bytes torch's
CPU allocator holds beyond what existed before the step, from the profiler's memory events
(torch.profiler with profile_memory=True reports every allocation and free of c10's CPU
allocator, temporaries inside ATen ops included; memory that MKL allocates by itself is not
seen). The inputs (logits, hidden states, weight) are allocated before and not counted.

    python -m benchmarks.bench_early_memory                        # B 256, V 151936, DoLa L 8, SLED L 24
    python -m benchmarks.bench_early_memory --batch 64 --mixed     # a batch where 1 row in 8 is plain

The hidden size does not change the working memory (only the [L, B, H] inputs and the GEMM's
work), so it defaults to 64 to keep the GEMMs short on a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from types import SimpleNamespace

import torch


def _processor(method: str, layers: int, batch: int, mixed: bool):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from real_vllm.integration import early_models
    from real_vllm.integration.early_processor import EarlyLayerLogitsProcessor

    hf = SimpleNamespace(**{
        early_models.SLED_LAYERS: list(range(layers)), early_models.DOLA_LAYERS: list(range(layers)),
        early_models.SLED_NORM: False, early_models.DOLA_NORM: False,
    })
    config = SimpleNamespace(additional_config={"sampler": method}, scheduler_config=SimpleNamespace(max_num_seqs=batch),
                             model_config=SimpleNamespace(hf_config=hf))
    proc = EarlyLayerLogitsProcessor(config, torch.device("cpu"), False)
    requests = [SamplingParams(extra_args={"sampler": "none" if mixed and i % 8 == 3 else method}) for i in range(batch)]
    proc.update_state(BatchUpdate(batch, removed=[], added=[(i, r, [], []) for i, r in enumerate(requests)], moved=[]))
    return proc


def peak_bytes(method: str, batch: int, vocab: int, layers: int, hidden: int = 64, mixed: bool = False,
               seed: int = 0) -> int:
    """Peak bytes torch's CPU allocator held during one processor step, beyond its inputs."""
    from torch.profiler import ProfilerActivity, profile

    from real_vllm.integration import tap

    proc = _processor(method, layers, batch, mixed)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 3
    hidden_states = torch.randn(layers, batch, hidden, generator=g)
    weight = torch.randn(vocab, hidden, generator=g) * 0.5

    def norm(h):
        return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    tap.TAP.rows = tap.EarlyRows(tuple(range(layers)), hidden_states, norm=norm, weight=weight)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = proc.apply(logits)
        del out
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.unlink(path)
    events.sort(key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    held = peak = 0
    for e in events:
        if e["args"].get("Device Type", 0) == 0:  # CPU
            held += e["args"]["Bytes"]
            peak = max(peak, held)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dola-layers", type=int, default=8)
    parser.add_argument("--sled-layers", type=int, default=24)
    parser.add_argument("--mixed", action="store_true", help="every 8th row plain (the others are gathered)")
    parser.add_argument("--methods", default="dola,sled")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    try:
        from real_vllm import ops

        budget = f"{ops.WORKING_MEMORY / 2**20:.0f} MiB"
    except AttributeError:
        budget = "none"
    print(f"# torch {torch.__version__}, budget {budget}, B {args.batch}, V {args.vocab}, H {args.hidden}, "
          f"mixed {args.mixed}")
    for method in args.methods.split(","):
        layers = args.dola_layers if method == "dola" else args.sled_layers
        peak = peak_bytes(method, args.batch, args.vocab, layers, args.hidden, args.mixed)
        early = layers * args.batch * args.vocab * 4
        print(f"{method}: L {layers}: peak {peak / 2**20:.1f} MiB "
              f"(one [L, B, V] float32 tensor is {early / 2**20:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
