"""Aggregates of per-item numbers, paired bootstrap intervals, baseline curves and verdicts.

Every metric of a sweep point is an aggregate of per-item numbers (per wiki prompt or trivia
question, over its seeds), so a bootstrap over items (the same resampled items for every point:
paired) gives an interval for any comparison. Intervals are 90% percentile intervals of
``--bootstrap`` resamples of a split (the claims use "test").

Pareto comparisons ("more factual at the same diversity"): a baseline family (top-p or fixed
temperature, each with greedy as its zero-diversity end) is a piecewise-linear curve through its
points in the (diversity, factuality) plane; a method's factuality gain is its factuality minus
the curve's at the method's diversity, and its diversity gain is its diversity minus the curve's
at the method's factuality. Outside the baseline's range the gain is undefined (NaN), never
extrapolated. Wiki: factuality = 1 - NE_ER, diversity = distinct-4 across seeds. Trivia:
factuality = accuracy, diversity = the share of distinct answers across seeds.

A verdict is "reproduces" when the whole interval is on the claimed side, "contradicted" when it
is wholly on the other side, else "inconclusive".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLITS = ("tune", "test", "all")
# (diversity, factuality) axes of each task's Pareto plane.
AXES = {"wiki": ("distinct_4", "factuality"), "trivia": ("answer_distinct", "accuracy")}


def _nanmean(a: np.ndarray) -> np.ndarray:
    count = np.sum(~np.isnan(a), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(a, axis=-1) / np.maximum(count, 1), np.nan)


def aggregate(task: str, cols: dict, idx: np.ndarray, seeds: int) -> dict:
    """The task's metrics over the items idx (1-D), or per row of idx (2-D: bootstrap)."""
    take = {k: v[idx] for k, v in cols.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        if task == "wiki":
            ent, unsup = take["ent"].sum(-1), take["unsup"].sum(-1)
            out = {
                "ne_er": np.where(ent > 0, unsup / np.maximum(ent, 1), np.nan),
                "entities_per_sentence": ent / (idx.shape[-1] * seeds),
                "article_match": np.where(take["held"].sum(-1) > 0,
                                          take["held_hit"].sum(-1) / np.maximum(take["held"].sum(-1), 1), np.nan),
                "distinct_2": _nanmean(take["d2"]), "distinct_3": _nanmean(take["d3"]),
                "distinct_4": _nanmean(take["d4"]), "self_bleu": _nanmean(take["sbleu"]),
                "self_similarity": _nanmean(take["ssim"]), "mean_words": _nanmean(take["words"]),
            }
            out["factuality"] = 1 - out["ne_er"]
        else:
            out = {
                "accuracy": take["acc"].mean(-1), "exact_match": take["em"].mean(-1), "pass_at_k": take["pass"].mean(-1),
                "answer_distinct": _nanmean(take["adist"]), "wrong_distinct": _nanmean(take["wdist"]),
                "wrong_self_similarity": _nanmean(take["wssim"]), "self_similarity": _nanmean(take["ssim"]),
                "mean_words": _nanmean(take["words"]),
            }
    return out


class Stats:
    """Per-item numbers of every (point label, task), the items' splits, bootstrap indices."""

    def __init__(self, seeds: int, splits: dict, bootstrap: int = 1000, seed: int = 0):
        self.seeds, self.cols, self.points = seeds, {}, {}
        self.split_idx = {task: {s: np.flatnonzero([x == s or s == "all" for x in labels]) for s in SPLITS}
                          for task, labels in splits.items()}
        rng = np.random.default_rng(seed)
        self.boot = {task: {s: (rng.integers(0, len(ix), size=(bootstrap, len(ix))) if len(ix) else None)
                            for s, ix in by.items()} for task, by in self.split_idx.items()}

    def has(self, label: str, task: str) -> bool:
        return (label, task) in self.cols

    def value(self, label: str, task: str, split: str = "test") -> dict:
        return aggregate(task, self.cols[(label, task)], self.split_idx[task][split], self.seeds)

    def resampled(self, label: str, task: str, split: str = "test") -> dict:
        """Metrics per bootstrap resample: {metric: [B]} (the same resamples for every point)."""
        ix, boot = self.split_idx[task][split], self.boot[task][split]
        return aggregate(task, self.cols[(label, task)], ix[boot], self.seeds)


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 90% bootstrap interval (NaN where undefined)."""

    est: float
    lo: float = math.nan
    hi: float = math.nan

    def verdict(self, null: float = 0.0) -> str:
        return "n/a" if math.isnan(self.est) else verdict(self.lo, self.hi, null)


def curve_value(x: float, xs, ys) -> float:
    """The piecewise-linear curve through (xs, ys), sorted by x, at x; NaN outside its range."""
    pts = sorted((a, b) for a, b in zip(xs, ys) if not (math.isnan(a) or math.isnan(b)))
    if len(pts) < 1 or math.isnan(x) or x < pts[0][0] or x > pts[-1][0]:
        return math.nan
    return float(np.interp(x, [a for a, _ in pts], [b for _, b in pts]))


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 5th and 95th percentiles of the defined draws (NaN when fewer than half, or < 10, are)."""
    v = values[~np.isnan(values)]
    if len(v) < max(10, 0.5 * len(values)):
        return math.nan, math.nan
    return float(np.percentile(v, 5)), float(np.percentile(v, 95))


def verdict(lo: float, hi: float, null: float = 0.0) -> str:
    if math.isnan(lo):
        return "n/a"
    return "reproduces" if lo > null else "contradicted" if hi < null else "inconclusive"


def _gains(stats: Stats, label: str, baseline: list[str], task: str, split: str, axis: str,
           with_draws: bool = True) -> tuple[float, np.ndarray | None]:
    """The gain of point ``label`` over the baseline curve on ``axis``, and its bootstrap draws."""
    xkey, ykey = AXES[task]
    if axis == "diversity":
        xkey, ykey = ykey, xkey

    def gain(values, base):
        return values[ykey] - curve_value(values[xkey], [b[xkey] for b in base], [b[ykey] for b in base])

    point = stats.value(label, task, split)
    base = [stats.value(b, task, split) for b in baseline]
    est = float(gain({k: float(v) for k, v in point.items()}, [{k: float(v) for k, v in b.items()} for b in base]))
    if not with_draws:
        return est, None
    rp = stats.resampled(label, task, split)
    rb = [stats.resampled(b, task, split) for b in baseline]
    n = len(next(iter(rp.values())))
    return est, np.array([gain({k: v[i] for k, v in rp.items()}, [{k: v[i] for k, v in b.items()} for b in rb])
                          for i in range(n)])


def pareto_gain(stats: Stats, label: str, baseline: list[str], task: str, split: str = "test", axis: str = "factuality",
                with_interval: bool = True) -> Estimate:
    """The gain of point ``label`` over the baseline curve on ``axis`` (factuality or diversity)."""
    est, draws = _gains(stats, label, baseline, task, split, axis, with_interval)
    return Estimate(est, *interval(draws)) if with_interval else Estimate(est)


def pareto_gain_difference(stats: Stats, a: str, b: str, baseline: list[str], task: str, split: str = "test",
                           axis: str = "factuality") -> Estimate:
    """Point a's gain over the baseline curve minus point b's, paired (the same resampled items)."""
    est_a, draws_a = _gains(stats, a, baseline, task, split, axis)
    est_b, draws_b = _gains(stats, b, baseline, task, split, axis)
    return Estimate(est_a - est_b, *interval(draws_a - draws_b))


def paired_difference(stats: Stats, a: str, b: str, task: str, metric: str, split: str = "test", ratio: bool = False,
                      transform=lambda v: v) -> Estimate:
    """transform(metric) of point a minus (or, with ratio, over) that of point b, paired."""
    va, vb = stats.value(a, task, split), stats.value(b, task, split)
    ra, rb = stats.resampled(a, task, split), stats.resampled(b, task, split)
    with np.errstate(invalid="ignore", divide="ignore"):
        if ratio:
            est = float(transform(va[metric]) / transform(vb[metric]))
            draws = transform(ra[metric]) / transform(rb[metric])
        else:
            est = float(transform(va[metric]) - transform(vb[metric]))
            draws = transform(ra[metric]) - transform(rb[metric])
    return Estimate(est, *interval(np.asarray(draws, dtype=float)))
