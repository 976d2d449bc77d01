"""Where the benchmarks write their tables and plots (the helpers they share, machine name,
timing and CSV writing, are real_vllm.utils')."""

from pathlib import Path

RESULTS = Path(__file__).parent / "results"
