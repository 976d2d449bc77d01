"""The papers' claims as data, each judged on the test split with paired bootstrap intervals.

A claim names the method, the paper's wording and how it is measured: a frontier claim (the
method's default point above a baseline family's curve, stats.pareto_gain), a difference claim
(the default point against other methods' reference points on some metrics, paired), or a ratio
claim (a diversity ratio over direct sampling at the method's temperature). A method run in
variants (REAL with each THF: curves real, real[NAME], ...) has its claim judged for each, and a
choice claim says which variant, at which setting, to make the default: picked on the tune split,
confirmed on the test split. Each yields table rows; the rows marked primary decide the method's verdict: "reproduces" needs every primary row
to reproduce, "contradicted" at least one contradicted and none reproducing, "mixed" both, else
"inconclusive". Other rows (the other axis, the best setting on tune, the other task) are context.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from real_vllm.quality.stats import AXES, Estimate, Stats, paired_difference, pareto_gain, pareto_gain_difference

NO_DATA = "undefined: no entities or items"
OUTSIDE = "outside the baseline's range"


@dataclass(frozen=True)
class Row:
    """One row of the claims table."""

    method: str
    claim: str
    measure: str
    estimate: Estimate
    primary: bool = False
    null: float = 0.0       # the value of "no effect": 0 for a difference, 1 for a ratio
    ratio: bool = False
    judged: bool = True     # False: context only, no verdict (a cost)
    why: str = NO_DATA      # why an undefined estimate is undefined

    @property
    def result(self) -> str:
        e = self.estimate
        if math.isnan(e.est):
            return "n/a" if self.ratio else f"n/a ({self.why})"
        if self.ratio:
            return f"x{e.est:.2f}" + ("" if math.isnan(e.lo) else f" [{e.lo:.2f}, {e.hi:.2f}]")
        return f"{e.est:+.3f}" + ("" if math.isnan(e.lo) else f" [{e.lo:+.3f}, {e.hi:+.3f}]")

    @property
    def verdict(self) -> str:
        return self.estimate.verdict(self.null) if self.judged else "-"


def reference_point(points: dict, method: str) -> str | None:
    """The label of a method's default point, or of its only point (greedy has one)."""
    mine = [label for label, p in points.items() if p.method == method]
    default = [label for label in mine if points[label].default]
    return default[0] if default else (mine[0] if len(mine) == 1 else None)


def family(points: dict, curve: str) -> list[str]:
    """The labels of the points drawn on a curve (a baseline family)."""
    return [label for label, p in points.items() if curve in p.curves()]


def variants(points: dict, method: str) -> list[str]:
    """The curves of a method in a run: the method and its variants with another THF (real[NAME])."""
    return [m for m in dict.fromkeys(p.method for p in points.values()) if m == method or m.startswith(method + "[")]


def best_on_tune(stats: Stats, method: str, score) -> str | None:
    """The method's point with the highest finite score(label) on the tune split."""
    scores = {label: score(label) for label, p in stats.points.items() if p.method == method}
    scores = {label: v for label, v in scores.items() if not math.isnan(v)}
    return max(scores, key=scores.get) if scores else None


@dataclass(frozen=True)
class BaselineClaim:
    """A paper's claim judged against a baseline family of points (top_p, temperature), on the
    factuality gain of primary_tasks."""

    method: str
    name: str
    claim: str
    summary: str
    baseline: str
    primary_tasks: tuple


@dataclass(frozen=True)
class FrontierClaim(BaselineClaim):
    """The method's default point lies above the baseline family's curve (both axes measured;
    the factuality gain on primary_tasks decides), plus the best setting on tune as context."""

    def rows(self, stats: Stats) -> list[Row]:
        pts = stats.points
        label, base = reference_point(pts, self.method), family(pts, self.baseline)
        rows = []
        if label is None or not pts[label].default or not base:
            return rows
        for task in ("wiki", "trivia"):
            if not stats.has(label, task) or not all(stats.has(b, task) for b in base):
                continue
            x, y = AXES[task]
            rows.append(Row(self.method, self.claim, f"{task}: {y} gain over {self.baseline} at equal {x} ({label})",
                            pareto_gain(stats, label, base, task), primary=task in self.primary_tasks, why=OUTSIDE))
            rows.append(Row(self.method, self.claim, f"{task}: {x} gain over {self.baseline} at equal {y} ({label})",
                            pareto_gain(stats, label, base, task, axis="diversity"), why=OUTSIDE))
            best = best_on_tune(stats, self.method, lambda lb: pareto_gain(stats, lb, base, task, "tune", with_interval=False).est
                                if stats.has(lb, task) else math.nan)
            if best and best != label:
                rows.append(Row(self.method, self.claim, f"{task}: {y} gain over {self.baseline}, best setting on tune ({best})",
                                pareto_gain(stats, best, base, task), why=OUTSIDE))
        return rows


@dataclass(frozen=True)
class ChoiceClaim(BaselineClaim):
    """Which variant of a method (REAL with each THF), at which setting, beats the baseline family
    by more: each variant's best setting on tune by its gain over the baseline curve at equal
    diversity; the variant whose best is higher there is the choice. On test: the chosen point's
    gain minus each other variant's pick, paired (primary on primary_tasks: "reproduces" confirms
    the choice), and each pick's own gain, as context. Needs two variants or more."""

    def rows(self, stats: Stats) -> list[Row]:
        pts = stats.points
        base = family(pts, self.baseline)
        rows = []
        for task in ("wiki", "trivia"):
            if not base or not all(stats.has(b, task) for b in base):
                continue

            def tune(label, task=task):
                return (pareto_gain(stats, label, base, task, "tune", with_interval=False).est
                        if stats.has(label, task) else math.nan)

            picks = {v: best_on_tune(stats, v, tune) for v in variants(pts, self.method)}
            picks = {v: label for v, label in picks.items() if label}
            if len(picks) < 2:
                continue
            chosen = picks[max(picks, key=lambda v: tune(picks[v]))]
            x, y = AXES[task]
            for label in picks.values():
                rows.append(Row(self.method, self.claim, f"{task}: {y} gain over {self.baseline} at equal {x}, "
                                f"{label} (tune: {tune(label):+.3f})", pareto_gain(stats, label, base, task), why=OUTSIDE))
            for label in picks.values():
                if label != chosen:
                    rows.append(Row(self.method, self.claim, f"{task}: {y} gain over {self.baseline}, {chosen} (chosen "
                                    f"on tune) minus {label}", pareto_gain_difference(stats, chosen, label, base, task),
                                    primary=task in self.primary_tasks, why=OUTSIDE))
        return rows


@dataclass(frozen=True)
class Measure:
    task: str
    metric: str
    label: str
    primary: bool = False


@dataclass(frozen=True)
class DifferenceClaim:
    """The method's default point minus each other method's reference point, paired, on each
    measure; plus the best setting on tune against the first of them, as context."""

    method: str
    name: str
    claim: str
    summary: str
    against: tuple
    measures: tuple
    note: str = ""          # appended to each measure's wording, e.g. "(greedy decoding)"

    def rows(self, stats: Stats) -> list[Row]:
        pts = stats.points
        label = reference_point(pts, self.method)
        rows = []
        if label is None or not pts[label].default:
            return rows
        for m in self.measures:
            for other in self.against:
                ref = reference_point(pts, other)
                if ref and stats.has(label, m.task) and stats.has(ref, m.task):
                    rows.append(Row(self.method, self.claim, f"{m.task}: {m.label}, {self.name} minus {other}{self.note}",
                                    paired_difference(stats, label, ref, m.task, m.metric), primary=m.primary))
            first = reference_point(pts, self.against[0])
            best = best_on_tune(stats, self.method, lambda lb: float(stats.value(lb, m.task, "tune")[m.metric])
                                if stats.has(lb, m.task) else math.nan)
            if best and best != label and first and stats.has(first, m.task):
                rows.append(Row(self.method, self.claim,
                                f"{m.task}: {m.label}, {self.name} minus {self.against[0]}, best setting on tune ({best})",
                                paired_difference(stats, best, first, m.task, m.metric)))
        return rows


@dataclass(frozen=True)
class RatioClaim:
    """A diversity ratio of the method's default point over direct sampling (the baseline
    method's point at the same temperature) on one task; the accuracy difference is its cost."""

    method: str
    name: str
    claim: str
    summary: str
    baseline: str
    task: str
    primary_metric: tuple    # (metric, wording, complement: the ratio of 1 - metric)
    other_metrics: tuple     # more (metric, wording, complement), context
    cost_metric: tuple       # (metric, wording): a difference, not judged

    def rows(self, stats: Stats) -> list[Row]:
        pts = stats.points
        label = reference_point(pts, self.method)
        if label is None or not pts[label].default or not stats.has(label, self.task):
            return []
        direct = next((lb for lb, p in pts.items() if p.method == self.baseline
                       and p.temperature == pts[label].temperature and stats.has(lb, self.task)), None)
        if direct is None:
            return []
        rows = []
        for i, (metric, wording, complement) in enumerate((self.primary_metric, *self.other_metrics)):
            est = paired_difference(stats, label, direct, self.task, metric, ratio=True,
                                    transform=(lambda v: 1 - v) if complement else (lambda v: v))
            rows.append(Row(self.method, self.claim, f"{self.task}: {wording}, VS / direct {direct}", est,
                            primary=i == 0, null=1.0, ratio=True))
        metric, wording = self.cost_metric
        rows.append(Row(self.method, "(its cost)", f"{self.task}: {wording}, VS minus direct {direct}",
                        paired_difference(stats, label, direct, self.task, metric), judged=False))
        return rows


CLAIMS = (
    FrontierClaim("real", "REAL", "more factual and more diverse than top-p", "more factual and more diverse than top-p",
                  baseline="top_p", primary_tasks=("wiki",)),
    ChoiceClaim("real", "REAL's THF", "the THF and decay chosen on tune beat the other THFs' against top-p",
                "the THF and decay chosen on tune, above top-p at equal diversity by more than the other THFs' picks",
                baseline="top_p", primary_tasks=("wiki",)),
    DifferenceClaim("sled", "SLED", "beats greedy and DoLa on factual accuracy", "beats greedy and DoLa on factual accuracy",
                    against=("greedy", "dola"), note=" (greedy decoding)",
                    measures=(Measure("trivia", "accuracy", "accuracy", primary=True),
                              Measure("wiki", "factuality", "1 - NE_ER"))),
    FrontierClaim("edt", "EDT", "balances quality and diversity better than any fixed temperature",
                  "a better quality-diversity balance than any fixed temperature",
                  baseline="temperature", primary_tasks=("wiki", "trivia")),
    RatioClaim("vs", "Verbalized Sampling", "multiplies diversity (1.6-2.1x in the paper)", "multiplies diversity",
               baseline="temperature", task="trivia",
               primary_metric=("self_similarity", "semantic diversity (1 - self-similarity)", True),
               other_metrics=(("answer_distinct", "distinct answers", False),),
               cost_metric=("accuracy", "accuracy")),
)


def overall(rows: list[Row]) -> str | None:
    """The verdict of a claim from its primary rows (None when it has none)."""
    kinds = [r.verdict for r in rows if r.primary]
    if not kinds:
        return None
    if all(k == "reproduces" for k in kinds):
        return "reproduces"
    if "reproduces" in kinds and "contradicted" in kinds:
        return "mixed"
    return "contradicted" if "contradicted" in kinds else "inconclusive"


def per_variant(stats: Stats, claims) -> list:
    """The claims with a frontier claim repeated for each variant of its method (REAL with each
    THF), each named after its THF."""
    out = []
    for claim in claims:
        if not isinstance(claim, FrontierClaim):
            out.append(claim)
            continue
        for method in variants(stats.points, claim.method) or [claim.method]:
            label = reference_point(stats.points, method)
            thf = stats.points[label].thf if label else None
            out.append(dataclasses.replace(claim, method=method, name=f"{claim.name} (THF {thf})" if thf else claim.name))
    return out


def judge(stats: Stats, claims=CLAIMS) -> tuple[list[Row], list[str]]:
    """The claims table's rows and one verdict line per claim (a frontier claim: per variant)."""
    rows, lines = [], []
    for claim in per_variant(stats, claims):
        mine = claim.rows(stats)
        rows += mine
        kind = overall(mine)
        if kind is None:
            if not isinstance(claim, ChoiceClaim):  # a choice needs two variants: silent with one
                lines.append(f"- **{claim.name}** ({claim.summary}): not measured in this run.")
            continue
        detail = "; ".join(f"{r.measure}: {r.result} ({r.verdict})" for r in mine if r.primary)
        lines.append(f"- **{claim.name}** ({claim.summary}): **{kind}** here. {detail}.")
    return rows, lines
