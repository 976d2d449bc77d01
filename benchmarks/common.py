"""Shared pieces of the benchmarks: the machine's name, CSV writing, timing."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from real_vllm.quality.report import write_csv  # noqa: F401  (one CSV writer for both)

RESULTS = Path(__file__).parent / "results"


def machine_name() -> str:
    """A short file-name-safe name: the GPU's, else the CPU model and core count."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = f"{name}-{os.cpu_count()}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", name.strip()).strip("-").lower()




def median_ms(fn, setup, reps: int) -> float:
    """Median wall time of fn() over reps runs after one warm-up run, setup() (untimed)
    before each. On a GPU the runs are timed with CUDA events."""
    setup()
    fn()
    times = []
    cuda = torch.cuda.is_available()
    for _ in range(reps):
        setup()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
