"""Measure the generated texts, judge the papers' claims, draw the Pareto plot.

Every metric of a sweep point is an aggregate of per-item numbers (per wiki prompt or trivia
question, over its seeds), so a bootstrap over items (the same resampled items for every point:
paired) gives an interval for any comparison. Intervals are 90% percentile intervals of
``--bootstrap`` resamples of the "test" split.

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

import csv
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from real_vllm.quality import metrics as M

SPLITS = ("tune", "test", "all")
WIKI_METRICS = ("ne_er", "entities_per_sentence", "article_match", "distinct_2", "distinct_3", "distinct_4",
                "self_bleu", "self_similarity", "mean_words")
TRIVIA_METRICS = ("accuracy", "exact_match", "pass_at_k", "answer_distinct", "wrong_distinct",
                  "wrong_self_similarity", "self_similarity", "mean_words")
AXES = {"wiki": ("distinct_4", "factuality"), "trivia": ("answer_distinct", "accuracy")}
OUTSIDE = "outside the baseline's range"
CURVE_STYLE = {"greedy": "k", "top_p": "tab:blue", "temperature": "tab:gray", "edt": "tab:orange",
               "real": "tab:green", "sled": "tab:red", "dola": "tab:purple", "vs": "tab:brown"}


# --------------------------------------------------------------------------------------------
# Per-item numbers
# --------------------------------------------------------------------------------------------

def _wiki_items(texts_per_item, wiki, embed_of) -> dict:
    cols = {k: [] for k in ("ent", "unsup", "held", "held_hit", "d2", "d3", "d4", "sbleu", "ssim", "words")}
    for item, texts in zip(wiki, texts_per_item):
        evidence = M.Evidence(item.evidence)
        ent = unsup = hit = 0
        for text in texts:
            e, u = M.unsupported_entities(M.first_sentence(text), evidence)
            ent, unsup = ent + len(e), unsup + len(u)
            generated = M.Evidence(text)
            hit += sum(generated.supports(h) for h in item.held_entities)
        cols["ent"].append(ent)
        cols["unsup"].append(unsup)
        cols["held"].append(len(item.held_entities) * len(texts))
        cols["held_hit"].append(hit)
        # Diversity over the non-empty samples (an empty text, e.g. EOS first, is no evidence
        # of diversity); NaN, left out of the means, with fewer than two.
        said = [t for t in texts if t.strip()]
        for n in (2, 3, 4):
            cols[f"d{n}"].append(M.distinct_n(said, n) if len(said) >= 2 else math.nan)
        cols["sbleu"].append(M.self_bleu(said))
        cols["ssim"].append(M.self_similarity(embed_of(said)))
        cols["words"].append(sum(len(M.words(t)) for t in texts) / max(len(texts), 1))
    return {k: np.asarray(v, dtype=float) for k, v in cols.items()}


def _trivia_items(texts_per_item, trivia, embed_of) -> dict:
    cols = {k: [] for k in ("acc", "em", "pass", "adist", "wdist", "wssim", "ssim", "words")}
    for item, texts in zip(trivia, texts_per_item):
        heads = [M.first_sentence(t) for t in texts]
        right = [M.answer_match(t, item.answers) for t in texts]
        norm = [M.normalize_answer(h) for h in heads]
        wrong = [h for h, ok in zip(heads, right) if not ok]
        n = max(len(texts), 1)
        cols["acc"].append(sum(right) / n)
        cols["em"].append(sum(M.exact_match(t, item.answers) for t in texts) / n)
        cols["pass"].append(float(any(right)))
        cols["adist"].append(M.unique_fraction(norm))
        cols["wdist"].append(M.unique_fraction([M.normalize_answer(w) for w in wrong]) if len(wrong) >= 2 else math.nan)
        said_wrong = [w for w in wrong if w.strip()]
        cols["wssim"].append(M.self_similarity(embed_of(said_wrong)) if len(said_wrong) >= 2 else math.nan)
        cols["ssim"].append(M.self_similarity(embed_of([h for h in heads if h.strip()])))
        cols["words"].append(sum(len(M.words(h)) for h in heads) / n)
    return {k: np.asarray(v, dtype=float) for k, v in cols.items()}


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


def measure(results, wiki, trivia, seeds: int, model_name: str, machine: str, bootstrap: int = 1000):
    """CSV rows (one per point, task and split) and the Stats for the claims."""
    texts = set()
    for g in results:
        for task, per_item in g.texts.items():
            for item_texts in per_item:
                texts.update(item_texts if task == "wiki" else (M.first_sentence(t) for t in item_texts))
    texts.discard("")
    print(f"embedding {len(texts)} distinct texts with MiniLM ...", file=sys.stderr)
    embed = M.Embedder()
    ordered = sorted(texts)
    vectors = embed(ordered) if ordered else None
    index = {t: i for i, t in enumerate(ordered)}

    def embed_of(batch):
        import torch

        if vectors is None:
            return torch.zeros(len(batch), 384)
        rows = [vectors[index[t]] if t in index else torch.zeros(vectors.shape[1]) for t in batch]
        return torch.stack(rows) if rows else torch.zeros(0, vectors.shape[1])

    stats = Stats(seeds, {"wiki": [w.split for w in wiki], "trivia": [t.split for t in trivia]}, bootstrap)
    rows = []
    for g in tqdm(results, desc="measuring", unit="point", file=sys.stderr):
        p = g.point
        for task, per_item in g.texts.items():
            cols = (_wiki_items(per_item, wiki, embed_of) if task == "wiki" else _trivia_items(per_item, trivia, embed_of))
            stats.cols[(p.label, task)] = cols
            stats.points[p.label] = p
            names = WIKI_METRICS if task == "wiki" else TRIVIA_METRICS
            for split in SPLITS:
                ix = stats.split_idx[task][split]
                value = aggregate(task, cols, ix, seeds) if len(ix) else {}
                row = {
                    "model": model_name, "machine": machine, "task": task, "split": split, "method": p.method,
                    "label": p.label, "default": p.default, "temperature": p.temperature, "top_p": p.top_p,
                    "extra_args": json.dumps(p.extra_args, sort_keys=True), "seeds": 1 if p.greedy else seeds,
                    "items": len(ix), "seconds": round(g.seconds, 1), "tokens": g.tokens,
                    "tok_s": round(g.tokens / g.seconds, 1) if g.tokens and g.seconds else math.nan,
                    "vs_failures": g.failures,
                }
                for name in WIKI_METRICS + TRIVIA_METRICS:
                    if name not in row:
                        row[name] = round(float(value[name]), 4) if name in names and name in value else math.nan
                rows.append(row)
    return rows, stats


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------

def curve_value(x: float, xs, ys) -> float:
    """The piecewise-linear curve through (xs, ys), sorted by x, at x; NaN outside its range."""
    pts = sorted((a, b) for a, b in zip(xs, ys) if not (math.isnan(a) or math.isnan(b)))
    if len(pts) < 1 or math.isnan(x) or x < pts[0][0] or x > pts[-1][0]:
        return math.nan
    return float(np.interp(x, [a for a, _ in pts], [b for _, b in pts]))


def _interval(values: np.ndarray) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    if len(v) < max(10, 0.5 * len(values)):
        return math.nan, math.nan
    return float(np.percentile(v, 5)), float(np.percentile(v, 95))


def verdict(lo: float, hi: float, null: float = 0.0) -> str:
    if math.isnan(lo):
        return "n/a"
    return "reproduces" if lo > null else "contradicted" if hi < null else "inconclusive"


def pareto_gain(stats: Stats, label: str, baseline: list[str], task: str, split: str = "test", axis: str = "factuality",
                interval: bool = True):
    """(estimate, lo, hi) of the gain of point `label` over the baseline curve (lo, hi: NaN
    without `interval`)."""
    xkey, ykey = AXES[task]
    if axis == "diversity":
        xkey, ykey = ykey, xkey

    def gain(values, base):
        return values[ykey] - curve_value(values[xkey], [b[xkey] for b in base], [b[ykey] for b in base])

    point = stats.value(label, task, split)
    base = [stats.value(b, task, split) for b in baseline]
    est = float(gain({k: float(v) for k, v in point.items()}, [{k: float(v) for k, v in b.items()} for b in base]))
    if not interval:
        return est, math.nan, math.nan
    rp = stats.resampled(label, task, split)
    rb = [stats.resampled(b, task, split) for b in baseline]
    n = len(next(iter(rp.values())))
    draws = np.array([gain({k: v[i] for k, v in rp.items()}, [{k: v[i] for k, v in b.items()} for b in rb]) for i in range(n)])
    lo, hi = _interval(draws)
    return est, lo, hi


def paired_difference(stats: Stats, a: str, b: str, task: str, metric: str, split: str = "test", ratio: bool = False,
                      transform=lambda v: v):
    va, vb = stats.value(a, task, split), stats.value(b, task, split)
    ra, rb = stats.resampled(a, task, split), stats.resampled(b, task, split)
    with np.errstate(invalid="ignore", divide="ignore"):
        if ratio:
            est = float(transform(va[metric]) / transform(vb[metric]))
            draws = transform(ra[metric]) / transform(rb[metric])
        else:
            est = float(transform(va[metric]) - transform(vb[metric]))
            draws = transform(ra[metric]) - transform(rb[metric])
    lo, hi = _interval(np.asarray(draws, dtype=float))
    return est, lo, hi


def _fmt(est, lo, hi, digits=3, why="undefined: no entities or items") -> str:
    if math.isnan(est):
        return f"n/a ({why})"
    ci = "" if math.isnan(lo) else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return f"{est:+.{digits}f}{ci}"


def _fmt_ratio(est, lo, hi) -> str:
    if math.isnan(est):
        return "n/a"
    ci = "" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
    return f"x{est:.2f}{ci}"


def _family(points: dict, curve: str) -> list[str]:
    return [label for label, p in points.items() if curve in p.curves()]


def _best_on_tune(stats: Stats, method: str, baseline: list[str], task: str) -> str | None:
    best, label_best = -math.inf, None
    for label, p in stats.points.items():
        if p.method != method or not stats.has(label, task):
            continue
        est, _, _ = pareto_gain(stats, label, baseline, task, split="tune", interval=False)
        if not math.isnan(est) and est > best:
            best, label_best = est, label
    return label_best


def _best_sled_on_tune(stats: Stats, task: str, metric: str) -> str | None:
    scores = {label: stats.value(label, task, "tune")[metric] for label, p in stats.points.items()
              if p.method == "sled" and stats.has(label, task)}
    scores = {label: v for label, v in scores.items() if not math.isnan(v)}
    return max(scores, key=scores.get) if scores else None


def claims(stats: Stats) -> tuple[list[dict], list[str]]:
    """The claims table's rows and one verdict line per method.

    Each method's verdict comes from its primary rows (marked * in the table): REAL, the wiki
    factuality gain over top-p at equal distinct-4 (the FactualityPrompts protocol of the paper);
    SLED, trivia accuracy against greedy and against DoLa (both); EDT, the factuality gain over
    fixed temperature at equal diversity on both tasks; VS, the semantic diversity ratio over
    direct sampling at the same temperature. "reproduces" needs every primary row to reproduce,
    "contradicted" at least one contradicted and none reproducing, "mixed" both, else
    "inconclusive". Other rows (the other axis, best setting on tune, the other task) are context.
    """
    rows, verdicts = [], []
    pts = stats.points
    default = {p.method: label for label, p in pts.items() if p.default}

    def add(method, claim, measure, est_lo_hi, null=0.0, ratio=False, primary=False, why="undefined: no entities or items"):
        est, lo, hi = est_lo_hi
        row = {"method": method, "claim": claim, "measure": measure + (" *" if primary else ""),
               "result": _fmt_ratio(est, lo, hi) if ratio else _fmt(est, lo, hi, why=why),
               "verdict": verdict(lo, hi, null) if not math.isnan(est) else "n/a", "primary": primary}
        rows.append(row)
        return row

    def frontier_rows(method, baseline_curve, claim, primary_tasks):
        base = _family(pts, baseline_curve)
        found = []
        if method not in default or not base:
            return found
        for task in ("wiki", "trivia"):
            if not stats.has(default[method], task) or not all(stats.has(b, task) for b in base):
                continue
            x, y = AXES[task]
            found.append(add(method, claim, f"{task}: {y} gain over {baseline_curve} at equal {x} ({default[method]})",
                             pareto_gain(stats, default[method], base, task), primary=task in primary_tasks, why=OUTSIDE))
            found.append(add(method, claim, f"{task}: {x} gain over {baseline_curve} at equal {y} ({default[method]})",
                             pareto_gain(stats, default[method], base, task, axis="diversity"), why=OUTSIDE))
            best = _best_on_tune(stats, method, base, task)
            if best and best != default[method]:
                found.append(add(method, claim, f"{task}: {y} gain over {baseline_curve}, best setting on tune ({best})",
                                 pareto_gain(stats, best, base, task), why=OUTSIDE))
        return found

    def summarise(name, found, what):
        primary = [r for r in found if r["primary"]]
        if not primary:
            verdicts.append(f"- **{name}** ({what}): not measured in this run.")
            return
        kinds = [r["verdict"] for r in primary]
        overall = ("reproduces" if all(k == "reproduces" for k in kinds) else
                   "mixed" if "reproduces" in kinds and "contradicted" in kinds else
                   "contradicted" if "contradicted" in kinds else "inconclusive")
        detail = "; ".join(f"{r['measure'].rstrip(' *')}: {r['result']} ({r['verdict']})" for r in primary)
        verdicts.append(f"- **{name}** ({what}): **{overall}** here. {detail}.")

    summarise("REAL", frontier_rows("real", "top_p", "more factual and more diverse than top-p", ("wiki",)),
              "more factual and more diverse than top-p")

    found = []
    if "sled" in default:
        for task, metric, label in (("trivia", "accuracy", "accuracy"), ("wiki", "factuality", "1 - NE_ER")):
            for other, o in (("greedy", "greedy" if "greedy" in pts else None), ("dola", default.get("dola"))):
                if o and stats.has(default["sled"], task) and stats.has(o, task):
                    found.append(add("sled", "beats greedy and DoLa on factual accuracy",
                                     f"{task}: {label}, SLED minus {other} (greedy decoding)",
                                     paired_difference(stats, default["sled"], o, task, metric), primary=task == "trivia"))
            # The sweep's context: the (alpha, k) with the best tune score, judged on test.
            best = _best_sled_on_tune(stats, task, metric)
            if best and best != default["sled"] and "greedy" in pts:
                add("sled", "beats greedy and DoLa on factual accuracy",
                    f"{task}: {label}, SLED minus greedy, best setting on tune ({best})",
                    paired_difference(stats, best, "greedy", task, metric))
    summarise("SLED", found, "beats greedy and DoLa on factual accuracy")

    summarise("EDT", frontier_rows("edt", "temperature", "balances quality and diversity better than any fixed temperature",
                                   ("wiki", "trivia")),
              "a better quality-diversity balance than any fixed temperature")

    found = []
    direct = next((label for label, p in pts.items() if p.method == "temperature" and "vs" in default
                   and p.temperature == pts[default["vs"]].temperature), None)
    if "vs" in default and direct and stats.has(default["vs"], "trivia"):
        vs_label = default["vs"]
        claim = "multiplies diversity (1.6-2.1x in the paper)"
        found.append(add("vs", claim, f"trivia: semantic diversity (1 - self-similarity), VS / direct {direct}",
                         paired_difference(stats, vs_label, direct, "trivia", "self_similarity", ratio=True,
                                           transform=lambda v: 1 - v), null=1.0, ratio=True, primary=True))
        found.append(add("vs", claim, f"trivia: distinct answers, VS / direct {direct}",
                         paired_difference(stats, vs_label, direct, "trivia", "answer_distinct", ratio=True), null=1.0, ratio=True))
        rows.append({"method": "vs", "claim": "(its cost)", "measure": f"trivia: accuracy, VS minus direct {direct}",
                     "result": _fmt(*paired_difference(stats, vs_label, direct, "trivia", "accuracy")), "verdict": "-",
                     "primary": False})
    summarise("Verbalized Sampling", found, "multiplies diversity")
    return rows, verdicts


# --------------------------------------------------------------------------------------------
# Summary and plot
# --------------------------------------------------------------------------------------------

def _table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _num(v, digits=3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summary(rows: list[dict], stats: Stats, points, args, model_name: str, machine: str, timing: dict) -> str:
    claim_rows, verdicts = claims(stats)
    n_items = {task: {s: len(stats.split_idx[task][s]) for s in SPLITS} for task in ("wiki", "trivia")}
    out = [
        f"# Quality: factuality vs diversity, {model_name} ({machine})",
        "",
        f"`real-vllm eval{' --quick' if args.quick else ''}` (seeds {args.seeds}; wiki prompts tune/test "
        f"{n_items['wiki']['tune']}/{n_items['wiki']['test']}; trivia questions tune/test "
        f"{n_items['trivia']['tune']}/{n_items['trivia']['test']}; {len(points)} sweep points). Engine start "
        f"{timing['startup_s']:.0f} s, generation {timing['generation_s']:.0f} s"
        + (f" ({timing['reused_points']} points' texts taken from an earlier run with --reuse; their time counted)"
           if timing.get("reused_points") else "") + f", metrics {timing['measure_s']:.0f} s.",
        "Claims are judged on the **test** split (defaults come from the papers; the 'best on tune' rows pick a "
        "setting on the tune split only), with 90% bootstrap intervals over test items. A verdict comes from the "
        "rows marked * (see real_vllm/quality/report.py); the others are context.",
        *(["", "**--quick is a smoke run: a handful of prompts, its numbers say nothing about the methods.**"]
          if args.quick else []),
        "",
        "## Verdicts",
        "",
        *verdicts,
        "",
        _table(["method", "paper's claim", "measure (test split)", "result [90% CI]", "verdict"],
               [[r["method"], r["claim"], r["measure"], r["result"], r["verdict"]] for r in claim_rows]),
        "",
        "## Every sweep point (test split)",
        "",
    ]
    test = {(r["label"], r["task"]): r for r in rows if r["split"] == "test"}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    body = []
    for label in labels:
        w, t = test.get((label, "wiki"), {}), test.get((label, "trivia"), {})
        any_row = w or t
        body.append([label, _num(w.get("ne_er")), _num(w.get("entities_per_sentence"), 2), _num(w.get("article_match")),
                     _num(w.get("distinct_4")), _num(w.get("self_bleu")), _num(w.get("self_similarity")),
                     _num(t.get("accuracy")), _num(t.get("pass_at_k")), _num(t.get("answer_distinct")),
                     _num(t.get("wrong_distinct")), _num(any_row.get("tok_s"), 0) if any_row else ""])
    out.append(_table(["point", "NE_ER", "ents/sent", "article match", "distinct-4", "self-BLEU", "self-sim",
                       "accuracy", f"pass@{args.seeds}", "distinct answers", "distinct wrong", "tok/s"], body))
    out += [
        "",
        "NE_ER: share of named entities/numbers of the first generated sentence not in the article (lower = more "
        "factual); article match: share of the article's later entities the continuation mentions; distinct-4, "
        "self-BLEU, self-sim: across seeds, per prompt, over its non-empty samples (self-BLEU and self-sim: lower = "
        "more diverse); accuracy: "
        "accepted answer in the first sentence; distinct answers/wrong: distinct normalised answers across seeds. "
        "Greedy points run one seed, copied. tok/s: the whole point (both tasks) in one batch, on a machine "
        "possibly shared with other jobs.",
        "",
        "Caveats: a 135M-parameter model; NE_ER uses a capitalisation heuristic (no NER model offline) against a "
        "lead summary only, so a true fact missing from the lead counts as an error; REAL uses the THF shipped for "
        "this model, trained on a home-made family whose forecasts are weak (see real_vllm/thf/checkpoints/smollm2/"
        "RECIPE.md); VS candidates are de-duplicated by its parser, so its distinct-answer share is high by "
        "construction: the semantic ratio is the fairer one.",
        "",
    ]
    return "\n".join(out)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("wiki", "distinct_4", "distinct-4 across seeds (more diverse ->)", "ne_er", "1 - NE_ER (more factual ^)"),
              ("wiki", "self_similarity", "1 - MiniLM self-similarity (more diverse ->)", "ne_er", "1 - NE_ER"),
              ("trivia", "answer_distinct", "distinct answers across seeds (->)", "accuracy", "accuracy (^)")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    test = [r for r in rows if r["split"] == "test"]
    for ax, (task, xk, xl, yk, yl) in zip(axes, panels):
        mine = [r for r in test if r["task"] == task]
        fx = (lambda r: 1 - r[xk]) if xk == "self_similarity" else (lambda r: r[xk])
        fy = (lambda r: 1 - r[yk]) if yk == "ne_er" else (lambda r: r[yk])
        methods = list(dict.fromkeys(r["method"] for r in mine))
        for method in methods:
            pts = [r for r in mine if r["method"] == method or
                   (method in ("top_p", "temperature") and r["method"] == "greedy") or
                   (method == "temperature" and r["label"] == "top_p=1")]
            pts = sorted(((fx(r), fy(r), r) for r in pts), key=lambda t: t[0])
            pts = [t for t in pts if not (math.isnan(t[0]) or math.isnan(t[1]))]
            if not pts:
                continue
            style = "-o" if len(pts) > 1 and method != "greedy" else "o"
            ax.plot([t[0] for t in pts], [t[1] for t in pts], style, color=CURVE_STYLE.get(method), label=method,
                    markersize=7 if method != "greedy" else 9, alpha=0.85)
            for x, y, r in pts:
                if r["method"] == method:
                    short = r["label"].replace(f"{method} ", "")
                    ax.annotate(short if "=" in short and len(pts) > 1 else r["label"], (x, y), fontsize=6,
                                alpha=0.7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{task} (test split)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=110)
    plt.close(fig)
