"""The quality report: the markdown summary (verdicts, claims table, every sweep point, the
run's caveats) and the factuality-diversity Pareto plot.

The caveats come from the run's record (run.py's record: the model and its parameter count,
the THFs that served REAL) and from metrics.text_tools() (the NER, splitter and BLEU used).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from real_vllm.quality.claims import judge
from real_vllm.quality.metrics import TextTools
from real_vllm.quality.stats import SPLITS, Stats

CURVE_STYLE = {"greedy": "k", "top_p": "tab:blue", "temperature": "tab:gray", "edt": "tab:orange",
               "real": "tab:green", "sled": "tab:red", "dola": "tab:purple", "vs": "tab:brown"}
VARIANT_STYLE = ("tab:olive", "tab:cyan", "tab:pink")  # REAL with a second, third, ... THF: real[NAME]


def _table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _num(v, digits=3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def caveats(record: dict, tools: TextTools, methods: set) -> str:
    """The run's caveats, from its record and the tools that measured it."""
    params = record.get("model_parameters")
    size = f"{params / 1e6:,.0f}M parameters" if params else "parameter count not recorded"
    out = [f"the model is {record['model']} ({size})",
           f"NE_ER's entities come from the {tools.ner}, checked against a lead summary only, so a true fact "
           "missing from the lead counts as an error",
           f"first sentences: {tools.sentence_splitter}; self-BLEU: {tools.bleu}"]
    if "real" in methods:
        out += thf_caveats(record)
    if "vs" in methods:
        out.append("VS candidates are de-duplicated by its parser, so its distinct-answer share is high by "
                   "construction: the semantic ratio is the fairer one")
    return "Caveats: " + "; ".join(out) + "."


def thf_caveats(record: dict) -> list[str]:
    """What the report says of each THF that served REAL (runs saved before "real_thfs" had one)."""
    thfs = record.get("real_thfs") or ({Path(record["real_thf"]["path"]).name: record["real_thf"]}
                                       if record.get("real_thf") else {})
    if not thfs:
        return ["REAL's THF was not recorded for this run"]
    out = []
    for i, (name, thf) in enumerate(thfs.items()):
        curve = "REAL" if i == 0 else f"real[{name}]"
        members = thf.get("members")
        out.append(f"{curve} uses the THF {thf['path']}"
                   + (f", trained on the entropies of the family {', '.join(members)}" if members else "")
                   + (" (shipped; its RECIPE.md says how it was made and how well it forecasts)" if thf.get("shipped") else ""))
    return out


def summary(rows: list[dict], stats: Stats, points, record: dict, tools: TextTools, timing: dict) -> str:
    """The markdown report of a run (``record``: the run's settings and metadata, see run.py)."""
    claim_rows, verdicts = judge(stats)
    n_items = {task: {s: len(stats.split_idx[task][s]) for s in SPLITS} for task in ("wiki", "trivia")}
    quick, seeds = record["quick"], record["seeds"]
    out = [
        f"# Quality: factuality vs diversity, {record['model']} ({record['machine']})",
        "",
        f"`real-vllm eval{' --quick' if quick else ''}` (seeds {seeds}; wiki prompts tune/test "
        f"{n_items['wiki']['tune']}/{n_items['wiki']['test']}; trivia questions tune/test "
        f"{n_items['trivia']['tune']}/{n_items['trivia']['test']}; {len(points)} sweep points). "
        + (f"Engine starts {timing['startup_s']:.0f} s ({timing['engines']} engines, one per THF)"
           if timing.get("engines", 1) > 1 else f"Engine start {timing['startup_s']:.0f} s")
        + f", generation {timing['generation_s']:.0f} s"
        + (f" ({timing['reused_points']} points' texts taken from an earlier run with --reuse; their time counted)"
           if timing.get("reused_points") else "") + f", metrics {timing['measure_s']:.0f} s.",
        f"Measured with: NER {tools.ner}; sentences {tools.sentence_splitter}; BLEU {tools.bleu}.",
        "Claims are judged on the **test** split (defaults come from the papers; the 'best on tune' rows pick a "
        "setting on the tune split only), with 90% bootstrap intervals over test items. A verdict comes from the "
        "rows marked * (see real_vllm/quality/claims.py); the others are context.",
        *(["", "**--quick is a smoke run: a handful of prompts, its numbers say nothing about the methods.**"]
          if quick else []),
        "",
        "## Verdicts",
        "",
        *verdicts,
        "",
        _table(["method", "paper's claim", "measure (test split)", "result [90% CI]", "verdict"],
               [[r.method, r.claim, r.measure + (" *" if r.primary else ""), r.result, r.verdict] for r in claim_rows]),
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
                       "accuracy", f"pass@{seeds}", "distinct answers", "distinct wrong", "tok/s"], body))
    out += [
        "",
        "NE_ER: share of named entities of the first generated sentence not in the article (lower = more "
        "factual); article match: share of the article's later entities the continuation mentions; distinct-4, "
        "self-BLEU, self-sim: across seeds, per prompt, over its non-empty samples (self-BLEU and self-sim: lower = "
        "more diverse); accuracy: "
        "accepted answer in the first sentence; distinct answers/wrong: distinct normalised answers across seeds. "
        "Greedy points run one seed, copied. tok/s: the whole point (both tasks) in one batch, on a machine "
        "possibly shared with other jobs.",
        "",
        caveats(record, tools, {p.kind for p in points}),
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
        variant_colour = dict(zip([m for m in methods if "[" in m], VARIANT_STYLE))
        for method in methods:
            pts = [r for r in mine if r["method"] == method or
                   (method in ("top_p", "temperature") and r["method"] == "greedy") or
                   (method == "temperature" and r["label"] == "top_p=1")]
            pts = sorted(((fx(r), fy(r), r) for r in pts), key=lambda t: t[0])
            pts = [t for t in pts if not (math.isnan(t[0]) or math.isnan(t[1]))]
            if not pts:
                continue
            style = "-o" if len(pts) > 1 and method != "greedy" else "o"
            thf = next((r["thf"] for _, _, r in pts if r["method"] == method and r.get("thf")), "")
            name = f"{method} (THF {thf})" if thf and "[" not in method else method
            ax.plot([t[0] for t in pts], [t[1] for t in pts], style, color=CURVE_STYLE.get(method, variant_colour.get(method)),
                    label=name,
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
