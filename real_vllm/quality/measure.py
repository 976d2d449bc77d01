"""Measure the generated texts: per-item numbers of every sweep point and task, and the CSV rows.

The per-item numbers (per wiki prompt or trivia question, over its seeds) are what stats.py
aggregates and resamples; metrics.py defines each measure and text_tools() names the tools
(NER, sentence splitter, BLEU) that every CSV row records.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
from tqdm import tqdm

from real_vllm.quality import metrics as M
from real_vllm.quality.stats import SPLITS, Stats, aggregate

WIKI_METRICS = ("ne_er", "entities_per_sentence", "article_match", "distinct_2", "distinct_3", "distinct_4",
                "self_bleu", "self_similarity", "mean_words")
TRIVIA_METRICS = ("accuracy", "exact_match", "pass_at_k", "answer_distinct", "wrong_distinct",
                  "wrong_self_similarity", "self_similarity", "mean_words")


def _wiki_items(texts_per_item, wiki, embed_of) -> dict:
    cols = {k: [] for k in ("ent", "unsup", "held", "held_hit", "d2", "d3", "d4", "sbleu", "ssim", "words")}
    for item, texts in zip(wiki, texts_per_item):
        evidence = M.Evidence(item.evidence)
        ent = unsup = hit = 0
        for text in texts:
            e, u = M.unsupported_entities(M.first_sentence(text), evidence)
            ent, unsup = ent + len(e), unsup + len(u)
            generated = M.Evidence(text)
            hit += sum(generated.supports(h, label) for h, label in item.held_entities.items())
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


def measure(results, wiki, trivia, seeds: int, model_name: str, machine: str, bootstrap: int = 1000):
    """CSV rows (one per point, task and split) and the Stats for the claims."""
    print("splitting sentences and finding entities ...", file=sys.stderr)
    for g in results:  # spaCy in batches first: everything below reads its results
        for task, per_item in g.texts.items():
            M.parse_ahead((t for item_texts in per_item for t in item_texts), sentences_too=task == "wiki")
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

    tools = M.text_tools()
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
                    "label": p.label, "thf": p.thf or "", "default": p.default, "temperature": p.temperature, "top_p": p.top_p,
                    "extra_args": json.dumps(p.extra_args, sort_keys=True), "seeds": 1 if p.greedy else seeds,
                    "items": len(ix), "seconds": round(g.seconds, 1), "tokens": g.tokens,
                    "tok_s": round(g.tokens / g.seconds, 1) if g.tokens and g.seconds else math.nan,
                    "vs_failures": g.failures,
                }
                for name in WIKI_METRICS + TRIVIA_METRICS:
                    if name not in row:
                        row[name] = round(float(value[name]), 4) if name in names and name in value else math.nan
                row.update(ner=tools.ner, sentence_splitter=tools.sentence_splitter, bleu=tools.bleu)
                rows.append(row)
    return rows, stats
