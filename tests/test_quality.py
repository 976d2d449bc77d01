"""The quality benchmark (real_vllm.quality): metrics on hand-computed examples, spaCy and
sacrebleu against the fallbacks, the data loaders, the claim arithmetic and the report's
caveats, and `real-vllm eval --quick` end to end on the tiny model."""

import csv
import hashlib
import math

import numpy as np
import pytest
import torch

from real_vllm.quality import claims, render, stats
from real_vllm.quality import metrics as M

needs_spacy = pytest.mark.skipif(M.load_spacy() is None, reason="spaCy or en_core_web_sm not installed (make venv installs them)")
needs_sacrebleu = pytest.mark.skipif(M.load_sacrebleu() is None, reason="sacrebleu not installed (make venv installs it)")


@pytest.fixture
def no_spacy(monkeypatch):
    """The fallback tools: spaCy's loader finds nothing, sacrebleu's neither."""
    monkeypatch.setattr(M, "load_spacy", lambda: None)
    monkeypatch.setattr(M, "load_sacrebleu", lambda: None)

# --------------------------------------------------------------------------------------------
# Sentences and the entity heuristic


def test_sentences_respect_abbreviations_initials_and_newlines(no_spacy):
    text = "Dr. Smith went to the U.S. Army base. He met J. R. R. Tolkien there! Then he left.\nA new line"
    assert M.sentences(text) == [
        "Dr. Smith went to the U.S. Army base.",
        "He met J. R. R. Tolkien there!",
        "Then he left.",
        "A new line",
    ]
    assert M.first_sentence("  \n\nIt began in 1929. It ended in 1939.") == "It began in 1929."
    assert M.first_sentence("") == ""


@pytest.mark.parametrize(
    "sentence,expected",
    [
        # A one-word run at the start says nothing (capitalised because it starts the sentence).
        ("Paris is the capital of France.", {"france"}),
        # A leading function word is dropped, the rest of the run kept.
        ("The Beatles were formed in Liverpool in 1960.", {"beatles", "liverpool", "1960"}),
        # A multi-word name at the start is kept whole; connectors join names.
        ("Leonardo da Vinci painted the Mona Lisa.", {"leonardo da vinci", "mona lisa"}),
        ("The Statue of Liberty is in New York City.", {"statue of liberty", "new york city"}),
        # "and" does not join, commas break runs, numbers are normalised, "I" is no entity.
        ("I saw John Lennon and Paul McCartney's band, Wings, in 1,234.5 seconds.",
         {"john lennon", "paul mccartney", "wings", "1234.5"}),
        # Accents and case are normalised; initialisms are one word.
        ("In 1976 Björn Ulvaeus toured the U.S. twice.", {"1976", "bjorn ulvaeus", "u s"}),
        ("no names here at all.", set()),
    ],
)
def test_heuristic_entities(sentence, expected):
    assert M.heuristic_entities(sentence) == expected


def test_ne_er_counts_entities_missing_from_the_evidence_heuristic(no_spacy):
    evidence = M.Evidence("Albert Einstein\nGerman-born physicist\nAlbert Einstein was born in Ulm, "
                          "in the Kingdom of Württemberg, on 14 March 1879.")
    ents, bad = M.unsupported_entities("Albert Einstein was born in Bern in 1879.", evidence)
    assert ents == {"albert einstein", "bern", "1879"} and bad == {"bern"}  # NE_ER 1/3
    # Every word of a multi-word name in the evidence supports it; a number needs the same number.
    assert M.Evidence("Robert Stephenson Smyth Baden-Powell (1857)").supports(M.normalize_text("Robert Baden-Powell"))
    assert not M.Evidence("born in 1857").supports("1858")
    assert M.Evidence("Kingdom of Württemberg").supports("wurttemberg")


@needs_spacy
@pytest.mark.parametrize(
    "sentence,spacy_expected,heuristic_expected",
    [
        # Both find the person, the place and the year.
        ("Albert Einstein was born in Ulm in 1879.", {"albert einstein": "PERSON", "ulm": "GPE", "1879": "DATE"},
         {"albert einstein", "ulm", "1879"}),
        # The NER knows a band name at the start of a sentence is no place; the heuristic keeps it.
        ("The Beatles were formed in Liverpool in 1960.", {"liverpool": "GPE", "1960": "DATE"},
         {"beatles", "liverpool", "1960"}),
        # A leading "the" is dropped from spaCy's span ("the Mona Lisa").
        ("Leonardo da Vinci painted the Mona Lisa in Florence.",
         {"leonardo da vinci": "PERSON", "mona lisa": "WORK_OF_ART", "florence": "GPE"},
         {"leonardo da vinci", "mona lisa", "florence"}),
        # FactualityPrompts drops counts (CARDINAL) and vague dates ("the next day"); the heuristic counts numbers.
        ("He left 3 letters and died the next day.", {}, {"3"}),
    ],
)
def test_spacy_entities_against_the_heuristic(sentence, spacy_expected, heuristic_expected):
    assert M.spacy_entities(sentence) == spacy_expected
    assert M.entities(sentence) == spacy_expected  # spaCy is the default where installed
    assert M.heuristic_entities(sentence) == heuristic_expected


@needs_spacy
def test_spacy_support_rules_follow_factualityprompts():
    evidence = M.Evidence("Albert Einstein\nEinstein was born on 14 March 1879 in Ulm.")
    ents, bad = M.unsupported_entities("John Einstein was born in Bern on March 14th, 1879.", evidence)
    # A PERSON is supported by any of its words (FactualityPrompts: short forms of a name); a
    # DATE by all its words less ordinal suffixes; any other entity only as a whole.
    assert ents == {"john einstein", "bern", "march 14th 1879"} and bad == {"bern"}
    assert not M.Evidence("Ulm").supports("john smith", "PERSON")
    assert not M.Evidence("born in 1857").supports("1858", "DATE")


def test_first_sentence_takes_the_first_line():
    text = "  \n\nIt began in 1929. It ended in 1939.\nA new line"
    assert M.first_sentence(text) == "It began in 1929."
    assert M.first_sentence("") == "" and M.first_sentence("  \n ") == ""
    assert M.first_sentence("Dr. Smith went to the U.S. Army base. He met J. R. R. Tolkien there!") == \
        "Dr. Smith went to the U.S. Army base."


def test_the_fallback_is_named_when_spacy_is_absent(no_spacy):
    tools = M.text_tools()
    assert "heuristic" in tools.ner and "fallback" in tools.ner
    assert "rule-based" in tools.sentence_splitter and "fallback" in tools.sentence_splitter
    assert "built-in" in tools.bleu and "fallback" in tools.bleu
    # The fallback rules are the ones that run: the heuristic's labels, the rule-based splitter.
    assert M.entities("The Beatles were formed in Liverpool in 1960.") == {
        "beatles": "NAME", "liverpool": "NAME", "1960": "NUMBER"}
    record = {"model": "tiny", "model_parameters": None, "real_thf": None}
    text = render.caveats(record, tools, {"greedy"})
    assert tools.ner in text and tools.bleu in text and tools.sentence_splitter in text


@needs_spacy
@needs_sacrebleu
def test_the_tools_in_use_are_named():
    tools = M.text_tools()
    assert tools.ner.startswith("spaCy ") and "en_core_web_sm" in tools.ner
    assert tools.bleu.startswith("sacrebleu ")


# --------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize(
    "text,expected",
    [("The Beatles!", "beatles"), ("Three", "3"), ("1,000", "1000"), ("Café  au-lait", "cafe au lait"),
     ("An Apple a day", "apple day"), (1945, "1945")],
)
def test_normalize_answer(text, expected):
    assert M.normalize_answer(text) == expected


def test_answer_match_reads_the_first_sentence_with_normalised_answers():
    assert M.answer_match("The capital of Australia is Canberra.", ["Canberra"])
    assert M.answer_match("There are three of them.", [3])
    assert M.answer_match("It was Bugs Bunny, of course.", ["Bugs bunny"])
    assert not M.answer_match("It is Sydney. Or maybe Canberra.", ["Canberra"])  # only the first sentence
    assert not M.answer_match("Canberras are birds.", ["Canberra"])  # whole words only
    # One- or two-letter answers: a word with the same capitalisation, not a substring or "as".
    assert M.answer_match("The symbol of arsenic is As.", ["As"])
    assert not M.answer_match("It is known as arsenic.", ["As"])
    assert M.exact_match("Canberra.", ["canberra"]) and not M.exact_match("It is Canberra.", ["Canberra"])


# --------------------------------------------------------------------------------------------
# Diversity


def test_distinct_n_pools_ngrams_over_texts():
    # bigrams: (a b) (b a) (a b) | (a b) (b c): 3 unique of 5
    assert M.distinct_n(["a b a b", "A b c"], 2) == pytest.approx(3 / 5)
    assert M.distinct_n(["a b c"], 1) == 1.0
    assert math.isnan(M.distinct_n(["one"], 2))


def test_bleu_matches_hand_computed_values():
    hyp, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, brevity 1 -> (1/12) ** (1/4)
    assert M.bleu(hyp, [ref]) == pytest.approx((1 / 12) ** 0.25)
    # Short hypothesis: p1 = p2 = 1, p3 = p4 = 0.1 (smoothing: 0.1 / max(1, 0)), brevity exp(1 - 6/2)
    assert M.bleu("the cat".split(), ["the cat sat on the mat".split()]) == pytest.approx(math.sqrt(0.1) * math.exp(-2))
    # Clipping: "the the the" against "the cat": p1 = 1/3; no bigram -> smoothed; shorter ref -> no penalty.
    assert M.bleu("the the the".split(), ["the cat".split()]) == pytest.approx((1 / 3 * 0.1 / 2 * 0.1 / 1 * 0.1 / 1) ** 0.25)
    assert M.bleu(["x"], [["y"]]) == 0.0


@needs_sacrebleu
@pytest.mark.parametrize(
    "hypothesis,references",
    [("the cat sat on the mat", ["the cat sat on a mat"]),
     ("the cat sat on the mat today", ["the cat sat on a mat", "a dog sat on the mat", "the cat is here"]),
     ("one two three four five", ["six seven eight nine ten"]),
     ("the quick brown fox jumps over the lazy dog", ["the quick brown fox", "the lazy dog sleeps all day long"])],
)
def test_sacrebleu_agrees_with_the_builtin_bleu(hypothesis, references):
    # Lower-case words of 4 or more, no punctuation: 13a tokenisation is the words, every order
    # has n-grams, so both are NLTK's method 1 and agree exactly.
    builtin = M.bleu(hypothesis.split(), [r.split() for r in references])
    assert M.sacrebleu_sentence_bleu(hypothesis, references) == pytest.approx(builtin, abs=1e-9)


@needs_sacrebleu
def test_sacrebleu_differs_where_documented():
    # A 2-word hypothesis: sacrebleu's effective order averages the 2 orders it has (1.0);
    # the built-in BLEU smooths the missing orders (0.1 each) instead.
    hyp, ref = "the cat", "the cat"
    assert M.sacrebleu_sentence_bleu(hyp, [ref]) == pytest.approx(1.0)
    assert M.bleu(hyp.split(), [ref.split()]) == pytest.approx(math.sqrt(0.1))
    # Punctuation: 13a keeps "." as a token (a matched unigram), words() drops it.
    assert M.sacrebleu_sentence_bleu("a b c d .", ["a b c d ."]) == pytest.approx(1.0)
    assert M.bleu(M.words("a b c x ."), [M.words("a b c d .")]) != pytest.approx(
        M.sacrebleu_sentence_bleu("a b c x .", ["a b c d ."]))


def test_self_bleu(no_spacy):
    assert M.self_bleu(["a b c d e", "a b c d e", "a b c d e"]) == pytest.approx(1.0)
    assert M.self_bleu(["a b c d", "e f g h"]) == 0.0
    assert math.isnan(M.self_bleu(["only one"]))
    # Each against the other: symmetric here, so the mean is the pair's BLEU.
    pair = ["the cat sat on the mat", "the cat sat on a mat"]
    assert M.self_bleu(pair) == pytest.approx((1 / 12) ** 0.25)


@needs_sacrebleu
def test_self_bleu_with_sacrebleu():
    pair = ["the cat sat on the mat", "the cat sat on a mat"]
    assert M.self_bleu(pair) == pytest.approx((1 / 12) ** 0.25)
    assert M.self_bleu(["a b c d e"] * 3) == pytest.approx(1.0)
    assert M.self_bleu(["a b c d", "e f g h"]) == 0.0


def test_self_similarity_and_unique_fraction():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert M.self_similarity(e) == pytest.approx(2 / 6)  # pairs (0, 2) and (2, 0) are 1, the rest 0
    assert math.isnan(M.self_similarity(e[:1]))
    assert M.unique_fraction(["a", "b", "a", "a"]) == 0.5


# --------------------------------------------------------------------------------------------
# Claim arithmetic


def test_curve_value_interpolates_and_never_extrapolates():
    assert stats.curve_value(0.5, [1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.5)
    assert math.isnan(stats.curve_value(1.5, [0.0, 1.0], [1.0, 0.0]))
    assert stats.verdict(0.01, 0.2) == "reproduces"
    assert stats.verdict(-0.2, -0.01) == "contradicted"
    assert stats.verdict(-0.1, 0.1) == "inconclusive"
    assert stats.verdict(1.2, 1.5, null=1.0) == "reproduces"


def _trivia_cols(acc, adist):
    n = len(acc)
    nan = np.full(n, np.nan)
    return {"acc": np.asarray(acc, float), "em": np.zeros(n), "pass": np.asarray(acc, float) > 0,
            "adist": np.asarray(adist, float), "wdist": nan, "wssim": nan, "ssim": nan, "words": np.ones(n)}


def test_claims_judge_a_frontier_and_a_difference_from_data():
    from real_vllm.quality.run import Point

    n = 40
    rng = np.random.default_rng(0)
    st = stats.Stats(seeds=4, splits={"trivia": ["tune", "test"] * (n // 2)}, bootstrap=300)
    pts = {"greedy": Point("greedy", "greedy", 0.0, also=("top_p",)),
           "top_p=1": Point("top_p", "top_p=1", 1.0, 1.0),
           "real decay=4": Point("real", "real decay=4", 1.0, extra=(("sampler", "real"),), default=True),
           "sled": Point("sled", "sled", 0.0, default=True), "dola": Point("dola", "dola", 0.0, default=True)}
    # Baseline curve from (diversity 0.25, accuracy 0.6) to (1.0, 0.2); REAL at diversity 0.6
    # with accuracy 0.7 (the curve there: 0.41); SLED as accurate as greedy, DoLa far below.
    values = {"greedy": (0.6, 0.25), "top_p=1": (0.2, 1.0), "real decay=4": (0.7, 0.6), "sled": (0.6, 0.25),
              "dola": (0.1, 0.25)}
    for label, (acc, div) in values.items():
        right = (rng.random((n, 4)) < acc).mean(1) if label != "sled" else None
        st.cols[(label, "trivia")] = _trivia_cols(right if right is not None else st.cols[("greedy", "trivia")]["acc"],
                                                  np.full(n, div))
        st.points[label] = pts[label]
    rows, lines = claims.judge(st)
    real = [r for r in rows if r.method == "real" and r.primary is False and "accuracy gain" in r.measure]
    assert real and real[0].verdict == "reproduces"  # the trivia row is context for REAL (wiki decides)
    assert any("**REAL**" in line and "not measured" not in line for line in lines) is False  # no wiki: no verdict
    sled = {r.measure: r for r in rows if r.method == "sled"}
    assert sled["trivia: accuracy, SLED minus greedy (greedy decoding)"].estimate.est == 0.0
    assert sled["trivia: accuracy, SLED minus dola (greedy decoding)"].verdict == "reproduces"
    assert any(line.startswith("- **SLED**") and "**inconclusive**" in line for line in lines)


def _wiki_cols(rng, n, factuality, distinct_4, entities=40):
    nan = np.full(n, np.nan)
    return {"ent": np.full(n, entities, float), "unsup": rng.binomial(entities, 1 - factuality, n).astype(float),
            "held": np.zeros(n), "held_hit": np.zeros(n), "d2": nan, "d3": nan, "d4": np.full(n, distinct_4),
            "sbleu": nan, "ssim": nan, "words": np.ones(n)}


def test_real_is_judged_per_thf_and_the_thf_is_chosen_on_tune():
    from real_vllm.quality.run import Point, real_points

    n = 80
    rng = np.random.default_rng(1)
    st = stats.Stats(seeds=4, splits={"wiki": ["tune", "test"] * (n // 2)}, bootstrap=300)
    pts = [Point("greedy", "greedy", 0.0, also=("top_p",)), Point("top_p", "top_p=1", 1.0, 1.0)]
    pts += real_points((2.0, 4.0), 4.0, "a", first=True) + real_points((2.0, 4.0), 4.0, "b", first=False)
    # The top-p curve from (distinct-4 0.2, factuality 0.3) to (1.0, 0.2): 0.25 at 0.6, where the
    # REAL points lie. THF a: +0.10 at decay 2, +0.05 at its default 4; THF b: +0.20 and +0.15.
    values = {"greedy": (0.3, 0.2), "top_p=1": (0.2, 1.0), "real decay=2": (0.35, 0.6), "real decay=4": (0.30, 0.6),
              "real[b] decay=2": (0.45, 0.6), "real[b] decay=4": (0.40, 0.6)}
    for p in pts:
        st.cols[(p.label, "wiki")] = _wiki_cols(rng, n, *values[p.label])
        st.points[p.label] = p
    assert [p.label for p in pts[2:]] == ["real decay=2", "real decay=4", "real[b] decay=2", "real[b] decay=4"]
    assert {p.method for p in pts[2:]} == {"real", "real[b]"} and {p.kind for p in pts[2:]} == {"real"}
    rows, lines = claims.judge(st)
    # Each THF's default point (decay 4) is judged: its own verdict line, named after its THF.
    line_a = next(line for line in lines if line.startswith("- **REAL (THF a)**"))
    line_b = next(line for line in lines if line.startswith("- **REAL (THF b)**"))
    assert "(real decay=4)" in line_a and "(real[b] decay=4)" in line_b
    gains = {r.measure: r.estimate for r in rows if r.primary and r.method in ("real", "real[b]")}
    assert gains["wiki: factuality gain over top_p at equal distinct_4 (real decay=4)"].est == pytest.approx(0.05, abs=0.03)
    assert gains["wiki: factuality gain over top_p at equal distinct_4 (real[b] decay=4)"].est == pytest.approx(0.15, abs=0.03)
    # The choice: THF b at decay 2 on tune, its gain above THF a's pick (decay 2) confirmed on test.
    choice = {r.measure: r for r in rows if r.claim.startswith("the THF and decay chosen on tune")}
    [deciding] = [r for r in choice.values() if r.primary]
    assert deciding.measure == ("wiki: factuality gain over top_p, real[b] decay=2 (chosen on tune) minus real decay=2")
    assert deciding.estimate.est == pytest.approx(0.10, abs=0.03) and deciding.verdict == "reproduces"
    a_gain = choice[next(m for m in choice if m.startswith("wiki: factuality gain over top_p at equal distinct_4, real decay=2"))]
    b_gain = choice[next(m for m in choice if m.startswith("wiki: factuality gain over top_p at equal distinct_4, real[b] decay=2"))]
    # Paired: the difference is the difference of the two gains, its interval narrower than theirs together.
    assert deciding.estimate.est == pytest.approx(b_gain.estimate.est - a_gain.estimate.est)
    assert any(line.startswith("- **REAL's THF**") and "**reproduces**" in line for line in lines)
    # With one THF there is nothing to choose: no choice rows, no line.
    for label in ("real[b] decay=2", "real[b] decay=4"):
        del st.points[label], st.cols[(label, "wiki")]
    rows, lines = claims.judge(st)
    assert not any(r.claim.startswith("the THF and decay chosen") for r in rows)
    assert not any("REAL's THF" in line for line in lines) and any(line.startswith("- **REAL (THF a)**") for line in lines)


def test_reuse_keys_ignore_the_thf_and_old_points_get_the_runs_thf():
    from real_vllm.quality.run import Point, _point_key, real_points, saved_thf_path, sweep

    [old] = [p for p in sweep(False, 4, ("smollm2",)) if p.label == "real decay=4"]
    assert old.thf == "smollm2" and old.default
    # A run saved before points named their THF has the same key: its texts are taken again.
    assert _point_key(old) == _point_key(Point(**{**old.__dict__, "thf": None}))
    labels = [p.label for p in sweep(False, 4, ("smollm2", "smollm2-depth")) if p.kind == "real"]
    assert labels == ["real decay=2", "real decay=4", "real decay=8", "real[smollm2-depth] decay=2",
                      "real[smollm2-depth] decay=4", "real[smollm2-depth] decay=8"]
    assert not [p for p in sweep(True, 2, ()) if p.kind == "real"]  # no THF, no REAL
    a, b = real_points((4.0,), 4.0, "x", first=True)[0], real_points((4.0,), 4.0, "x", first=False)[0]
    assert _point_key(a) != _point_key(b)
    # The THF a saved point ran with: the run's one THF for a run saved before they were listed.
    assert saved_thf_path({"real_thf": {"path": "real_vllm/thf/checkpoints/smollm2"}}, old) == "real_vllm/thf/checkpoints/smollm2"
    listed = {"real_thf": {"path": "p1"}, "real_thfs": {"smollm2": {"path": "p1"}, "x": {"path": "p2"}}}
    assert saved_thf_path(listed, old) == "p1" and saved_thf_path(listed, b) == "p2"
    assert saved_thf_path(listed, real_points((4.0,), 4.0, "y", first=False)[0]) is None


def test_the_runs_thfs_default_to_the_shipped_ones_served_default_first(tmp_path, tiny_model_dir):
    from real_vllm.assets import default_model_dir
    from real_vllm.quality.run import run_thfs
    from real_vllm.thf.runtime import SHIPPED_CHECKPOINT

    thfs = run_thfs(str(default_model_dir()), None)
    shipped = sorted(p.name for p in SHIPPED_CHECKPOINT.parent.iterdir() if (p / "thf_config.json").is_file())
    assert thfs[0]["name"] == SHIPPED_CHECKPOINT.name and sorted(t["name"] for t in thfs) == shipped
    assert thfs[0]["record"]["path"] == "real_vllm/thf/checkpoints/smollm2" and thfs[0]["record"]["shipped"]
    with pytest.raises(SystemExit, match="--real-thf: .*no-such-thf does not exist.*shipped: smollm2"):
        run_thfs(str(default_model_dir()), ["no-such-thf"])
    # No shipped THF fits the tiny model; one named must fit.
    assert run_thfs(str(tiny_model_dir), None) == []
    with pytest.raises(SystemExit, match="--real-thf smollm2: its tokenizer is not the model's"):
        run_thfs(str(tiny_model_dir), ["smollm2"])


def test_caveats_come_from_the_run_record():
    tools = M.TextTools("NER X", "splitter Y", "BLEU Z")
    given = render.caveats({"model": "Qwen3-1.7B", "model_parameters": 1_720_000_000,
                            "real_thf": {"path": "/ckpt/qwen-thf", "shipped": False}}, tools, {"real", "vs"})
    assert "Qwen3-1.7B (1,720M parameters)" in given and "/ckpt/qwen-thf" in given and "135M" not in given
    assert "shipped" not in given and "NER X" in given and "VS candidates" in given
    # A run saved before the THFs were listed: its one THF, shipped.
    shipped = render.caveats({"model": "SmolLM2-135M-Instruct", "model_parameters": 134_515_008,
                              "real_thf": {"path": "real_vllm/thf/checkpoints/smollm2", "shipped": True}}, tools, {"real"})
    assert "(135M parameters)" in shipped and "VS candidates" not in shipped
    assert "REAL uses the THF real_vllm/thf/checkpoints/smollm2 (shipped; its RECIPE.md" in shipped
    # Two THFs: each named, the second by its curve, each with the family it was trained on.
    first = {"path": "real_vllm/thf/checkpoints/smollm2", "shipped": True, "members": ["xs", "s", "SmolLM2"]}
    depth = {"path": "/x/smollm2-depth", "shipped": False, "members": ["layer10", "layer20", "SmolLM2"]}
    both = render.caveats({"model": "m", "real_thf": first, "real_thfs": {"smollm2": first, "smollm2-depth": depth}},
                          tools, {"real"})
    assert "REAL uses the THF real_vllm/thf/checkpoints/smollm2, trained on the entropies of the family xs, s, SmolLM2" in both
    assert "real[smollm2-depth] uses the THF /x/smollm2-depth, trained on the entropies of the family layer10, " in both
    assert both.count("shipped") == 1
    old = render.caveats({"model": "m"}, tools, {"real"})  # a run saved before the record existed
    assert "parameter count not recorded" in old and "THF was not recorded" in old
    assert "THF" not in render.caveats({"model": "m"}, tools, {"greedy"})


# --------------------------------------------------------------------------------------------
# Data


def test_data_splits_are_fixed_and_balanced():
    from real_vllm.quality import data

    wiki = data.wiki_prompts(2)
    assert [w.split for w in wiki] == ["tune", "tune", "test", "test"]
    assert all(w.prompt.startswith(w.title + "\n\n") and w.title in w.evidence for w in wiki)
    assert [w.id for w in data.wiki_prompts(3)][:2] == [w.id for w in wiki][:2]  # larger runs are supersets
    trivia = data.trivia_items(3)
    assert [t.split for t in trivia] == ["tune"] * 3 + ["test"] * 3
    assert all(t.answers and t.question for t in trivia)
    assert {t.split for t in trivia} == {data.split_of(t.question) for t in trivia}
    sources = {t.source for t in data.red_trivia_items()} | {t.source for t in data.fanoutqa_items()[:1]}
    assert sources == set(data.TRIVIA_LISTS) | {"fanoutqa"}


def test_splits_use_the_shared_unit_hash_with_the_old_formula():
    from real_vllm.quality import data
    from real_vllm.utils import unit_hash

    def old_unit_hash(text, salt):  # quality/data.py's own copy before real_vllm.utils had one
        return int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode("utf-8")).digest()[:8], "big") / 2.0 ** 64

    assert data.unit_hash is unit_hash
    for key in ("Albert Einstein", "What is 2 + 2?", "wiki:Paris#0", ""):
        for salt in ("real_vllm.quality.split", "real_vllm.quality.order", "real_vllm.quality.seed"):
            assert unit_hash(key, salt) == old_unit_hash(key, salt)
    assert unit_hash("Albert Einstein", "real_vllm.quality.split") == 0.8490636185649331  # pinned: "test"
    assert data.split_of("Albert Einstein") == "test"
    assert all(w.split == data.split_of(w.title) for w in data.wiki_prompts(3))


def test_data_reads_an_archive_when_the_package_is_not_installed(tmp_path, monkeypatch):
    import io
    import tarfile
    import zipfile

    from real_vllm.quality import data

    sdist = tmp_path / "Red-Trivia-1.1.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        body = b"AUTHOR: someone\nWhat is 2 + 2?:\n- 4\n- Four\n"
        info = tarfile.TarInfo("Red-Trivia-1.1.1/redbot/ext/trivia/lists/general.yaml")
        info.size = len(body)
        t.addfile(info, io.BytesIO(body))
    wheel = tmp_path / "fanoutqa-1.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.FANOUT_DEV, '[{"decomposition": [{"question": "Capital of France?", "answer": "Paris"}]}]')
    monkeypatch.setattr(data, "_installed_file", lambda dist, suffix: None)
    monkeypatch.setattr(data, "_downloaded", lambda dist, version: sdist if dist == "red-trivia" else wheel)
    monkeypatch.setattr(data, "TRIVIA_LISTS", ("general",))
    [item] = data.red_trivia_items()
    assert (item.source, item.question, item.answers) == ("general", "What is 2 + 2?", ["4", "Four"])
    [item] = data.fanoutqa_items()
    assert (item.source, item.question, item.answers) == ("fanoutqa", "Capital of France?", ["Paris"])


# --------------------------------------------------------------------------------------------
# End to end on the tiny model


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_eval_quick_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    import real_vllm.quality.run as run
    from real_vllm.quality.run import main, sweep
    from tests.conftest import engine_env
    from tests.thf_fixtures import build_tiny_thf

    # Two THFs: REAL with each, the second's points in an engine of their own.
    thf = build_tiny_thf(tmp_path / "thf", tiny_model_dir)
    thf_b = build_tiny_thf(tmp_path / "thf_b", tiny_model_dir, seed=1)
    engines = []
    start_engine = run.start_engine
    monkeypatch.setattr(run, "start_engine", lambda model, layers, real_thf, seqs: engines.append(real_thf)
                        or start_engine(model, layers, real_thf, seqs))
    two = ["--real-thf", str(thf), "--real-thf", str(thf_b)]
    with engine_env():
        main(["--quick", "--model", str(tiny_model_dir), *two, "--out", str(tmp_path), "--bootstrap", "200"])
    assert engines == [thf.resolve(), thf_b.resolve()]
    [csv_path] = tmp_path.glob("quality_quick_*.csv")
    rows = list(csv.DictReader(open(csv_path)))
    labels = {p.label for p in sweep(quick=True, seeds=2, thfs=("thf", "thf_b"))}
    assert {r["label"] for r in rows} == labels and {"real decay=4", "real[thf_b] decay=4"} <= labels
    assert {r["thf"] for r in rows if r["label"].startswith("real")} == {"thf", "thf_b"}
    assert {r["split"] for r in rows} == {"tune", "test", "all"}
    by = {(r["label"], r["task"], r["split"]): r for r in rows}
    # Greedy points run one seed: its copies are identical.
    assert float(by[("greedy", "wiki", "all")]["self_bleu"]) == pytest.approx(1.0)
    assert float(by[("greedy", "trivia", "all")]["answer_distinct"]) == pytest.approx(0.5)
    assert float(by[("top_p=1", "wiki", "all")]["self_bleu"]) < 1.0
    assert ("vs k=2 T=0.7", "wiki", "all") not in by and ("vs k=2 T=0.7", "trivia", "all") in by
    for r in rows:
        for name in ("ne_er", "distinct_4", "self_bleu", "accuracy", "answer_distinct"):
            value = float(r[name])
            assert math.isnan(value) or 0 <= value <= 1, (r["label"], name, value)
    tools = M.text_tools()
    assert {(r["ner"], r["sentence_splitter"], r["bleu"]) for r in rows} == {(tools.ner, tools.sentence_splitter, tools.bleu)}
    assert csv_path.with_suffix(".png").stat().st_size > 10_000
    md = csv_path.with_suffix(".md").read_text()
    assert tools.ner in md and "135M" not in md  # caveats: this run's model and THFs
    assert f"REAL uses the THF {thf.resolve()}" in md and f"real[thf_b] uses the THF {thf_b.resolve()}" in md
    assert "(2 engines, one per THF)" in md
    for name in ("REAL (THF thf)", "REAL (THF thf_b)", "SLED", "EDT", "Verbalized Sampling"):
        assert f"**{name}**" in md
    samples = tmp_path / (csv_path.stem + "_samples.json.gz")
    # --rescore measures the saved texts again, without an engine: the same rows.
    main(["--rescore", str(samples), "--out", str(tmp_path / "again"), "--bootstrap", "200"])
    assert (tmp_path / "again" / csv_path.name).read_text() == csv_path.read_text()
    # --reuse takes every point the earlier run made: no engine starts, the same rows again.
    monkeypatch.setattr(run, "start_engine", lambda *a: pytest.fail("--reuse started an engine for made points"))
    same = ["--quick", "--model", str(tiny_model_dir), "--bootstrap", "200", "--reuse", str(samples)]
    main(same + two + ["--out", str(tmp_path / "reused")])
    assert (tmp_path / "reused" / csv_path.name).read_text() == csv_path.read_text()
    with pytest.raises(SystemExit, match="seeds 2, this run has 3"):
        main(same + two + ["--seeds", "3", "--out", str(tmp_path / "other")])
    # Another folder under the second THF's name: only its points are generated again, in its engine.
    other = build_tiny_thf(tmp_path / "elsewhere" / "thf_b", tiny_model_dir, seed=2)

    def refuse(model, layers, real_thf, seqs):
        raise RuntimeError(f"engine with {real_thf}")

    monkeypatch.setattr(run, "start_engine", refuse)
    with pytest.raises(RuntimeError, match=f"engine with {other.resolve()}$"):
        main(same + ["--real-thf", str(thf), "--real-thf", str(other), "--out", str(tmp_path / "other")])
    with pytest.raises(SystemExit, match="two THFs named 'thf_b'"):
        main(same + ["--real-thf", str(thf_b), "--real-thf", str(other), "--out", str(tmp_path / "other")])
