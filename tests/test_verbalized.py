"""Verbalized Sampling without an engine: prompts, the answer format, the parser on bad input,
Distribution.sample's frequencies, and the clients' plumbing against fakes."""

import json
import math
import re
from types import SimpleNamespace

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from real_vllm import verbalized as vs
from real_vllm.verbalized import Distribution, Item, VSParseError, parse_answer
from real_vllm.verbalized.cli import candidates_table
from real_vllm.verbalized.request import SEED_STRIDE


def answer(*pairs, **extra) -> str:
    return json.dumps({**extra, "responses": [{"text": t, "probability": p} for t, p in pairs]})


def check_valid(dist: Distribution) -> None:
    """What every Distribution must satisfy, however bad its input was."""
    assert len(dist) >= 1
    probs = dist.probabilities
    assert all(math.isfinite(p) and p >= 0 for p in probs)
    assert math.isclose(sum(probs), 1.0, abs_tol=1e-12)
    assert probs == sorted(probs, reverse=True)
    assert all(isinstance(t, str) and t.strip() == t and t for t in dist.texts)
    json.dumps(dist.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------ prompts


def test_standard_prompt_asks_for_k_with_probabilities_from_the_full_distribution():
    text = vs.system_prompt("standard", 7)
    assert "Generate 7 different responses" in text
    assert "exactly 7 responses" in text
    assert '"probability"' in text and "full distribution" in text
    assert "tails" not in text and "reasoning" not in text


def test_tail_knob_asks_for_probabilities_below_tau():
    text = vs.system_prompt("standard", 5, tau=0.1)
    assert "tails of the distribution" in text and "less than 0.1" in text


def test_cot_prompt_asks_for_reasoning_first():
    text = vs.system_prompt("cot", 5)
    assert '"reasoning"' in text and text.index('"reasoning"') < text.index('"responses"')


def test_multi_prompts_split_k_over_turns():
    assert vs.turn_sizes(5, 2) == [2, 2, 1]
    assert vs.turn_sizes(5) == [3, 2]
    assert vs.turn_sizes(4, 4) == [4]
    text = vs.system_prompt("multi", 5, m=2)
    assert "5 responses" in text and "first 2" in text and "exactly 2 responses" in text
    follow = vs.followup_message(2, tau=0.2)
    assert "2 more alternative responses" in follow and "less than 0.2" in follow


def test_messages_put_the_vs_instructions_in_the_system_turn():
    messages = vs.build_messages("Tell me a joke.", "standard", 3)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "Tell me a joke."


@pytest.mark.parametrize("kwargs, name", [
    (dict(k=0), "k"), (dict(k=2.5), "k"), (dict(k=True), "k"), (dict(k=vs.MAX_K + 1), "k"),
    (dict(tau=0.0), "tau"), (dict(tau=1.5), "tau"), (dict(tau=math.nan), "tau"), (dict(tau="0.1"), "tau"),
    (dict(method="vs-tail"), "method"), (dict(m=2), "m"), (dict(method="multi", k=3, m=4), "m"),
])
def test_bad_prompt_options_are_refused_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        vs.build_messages("hi", **kwargs)


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="prompt"):
        vs.build_messages("   ")


# ------------------------------------------------------------------------------ answer format


def test_schema_fixes_the_shape():
    schema = vs.answer_schema(3, reasoning=True, max_text_chars=10)
    good = {"reasoning": "r", "responses": [{"text": "a", "probability": 0.5}] * 3}
    jsonschema.validate(good, schema)
    for bad in (
        {"reasoning": "r", "responses": [{"text": "a", "probability": 0.5}] * 2},   # k items, not 2
        {"reasoning": "r", "responses": [{"text": "a", "probability": 1.5}] * 3},   # p <= 1
        {"reasoning": "r", "responses": [{"text": "a" * 11, "probability": 0.5}] * 3},
        {"responses": [{"text": "a", "probability": 0.5}] * 3},                     # reasoning required
        {"reasoning": "r", "responses": [{"text": "a"}] * 3},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 3), reasoning=st.booleans())
def test_every_regex_match_parses_validates_and_fits_the_token_bound(data, n, reasoning):
    kw = dict(reasoning=reasoning, max_text_chars=6, max_reasoning_chars=5)
    text = data.draw(st.from_regex(vs.answer_regex(n, **kw), fullmatch=True))
    jsonschema.validate(json.loads(text), vs.answer_schema(n, **kw))
    # Every token is at least one byte; the bound also counts the EOS.
    assert len(text.encode()) + 1 <= vs.answer_max_tokens(n, **kw)
    dist = parse_answer(text, k=n)
    check_valid(dist)


def test_the_token_bound_is_tight_for_the_longest_answer():
    wide = "\U0001F600"  # 4 bytes in UTF-8
    longest = json.dumps(
        {"reasoning": wide * 5, "responses": [{"text": wide * 6, "probability": 0.123456}] * 2},
        ensure_ascii=False, separators=(",", ":"))
    kw = dict(reasoning=True, max_text_chars=6, max_reasoning_chars=5)
    assert re.fullmatch(vs.answer_regex(2, **kw), longest)
    assert len(longest.encode()) + 1 == vs.answer_max_tokens(2, **kw)


@pytest.mark.parametrize("text", [
    '{"responses": [{"text":"a","probability":0.5}]}',              # whitespace
    '{"responses":[{"text":" a","probability":0.5}]}',              # blank start
    '{"responses":[{"text":"","probability":0.5}]}',                # empty text
    '{"responses":[{"text":"a","probability":1.5}]}',               # p > 1
    '{"responses":[{"text":"a","probability":0.1234567}]}',         # 7 decimals
    '{"responses":[{"text":"abcdefg","probability":0.5}]}',         # too long
    '{"responses":[{"text":"a","probability":0.5},{"text":"b","probability":0.5}]}',  # 2 items
    '{"responses":[{"probability":0.5,"text":"a"}]}',               # key order
    '{"responses":[{"text":"a\\nb","probability":0.5}]}',          # escapes (slow to match)
    '{"responses":[{"text":"\\"q\\"","probability":0.5}]}',
])
def test_regex_rejects_answers_outside_the_bounded_format(text):
    assert re.fullmatch(vs.answer_regex(1, max_text_chars=6), text) is None


def test_vllms_grammar_backend_reads_the_regex_as_python_does():
    xgr = pytest.importorskip("xgrammar")
    regex = vs.answer_regex(2, max_text_chars=8)
    grammar = xgr.Grammar.from_regex(regex)
    samples = [
        '{"responses":[{"text":"a \\"q\\"","probability":0.5},{"text":"b","probability":1}]}',
        '{"responses":[{"text":"a","probability":0.5},{"text":"b","probability":1.5}]}',
        '{"responses":[{"text":"\\u0041","probability":0.5},{"text":"b","probability":0}]}',
        '{"responses":[{"text":"tab\there","probability":0.5},{"text":"b","probability":0}]}',
        '{"responses":[{"text":"ok","probability":0.000001},{"text":"fine","probability":1.000000}]}',
    ]
    accepted = [xgr.testing._is_grammar_accept_string(grammar, text) for text in samples]
    assert accepted == [bool(re.fullmatch(regex, text)) for text in samples]
    assert accepted == [False, False, False, False, True]


# ------------------------------------------------------------------------------ parser


def test_a_clean_answer_is_normalised_and_sorted_without_repairs():
    dist = parse_answer(answer(("b", 0.2), ("a", 0.6), ("c", 0.1)), k=3)
    assert dist.texts == ["a", "b", "c"]
    assert dist.probabilities == pytest.approx([6 / 9, 2 / 9, 1 / 9])
    assert [it.stated for it in dist.items] == [0.6, 0.2, 0.1]
    assert dist.repairs == ()
    check_valid(dist)


def test_reasoning_is_kept():
    dist = parse_answer(answer(("a", 1.0), reasoning="think"))
    assert dist.reasoning == "think"


@pytest.mark.parametrize("text", [
    "Sure! Here you go:\n```json\n" + answer(("a", 0.7), ("b", 0.3)) + "\n```\nHope it helps.",
    "Here: " + answer(("a", 0.7), ("b", 0.3)) + " -- done",
    "{'responses': [{'text': 'a', 'probability': 0.7}, {'text': 'b', 'probability': 0.3}]}",
    '{"responses": [{"text": "a", "probability": 0.7}, {"text": "b", "probability": 0.3},]}',
])
def test_json_wrapped_in_prose_fences_or_python_syntax_is_found(text):
    dist = parse_answer(text)
    assert dist.texts == ["a", "b"] and dist.probabilities == pytest.approx([0.7, 0.3])


def test_a_truncated_answer_keeps_its_complete_items_and_says_so():
    full = answer(("first", 0.5), ("second", 0.3), ("third", 0.2))
    cut = full[: full.index("third") + 3]
    dist = parse_answer(cut, k=3, finish_reason="length")
    assert dist.texts == ["first", "second"]
    assert dist.probabilities == pytest.approx([0.625, 0.375])
    joined = " ".join(dist.repairs)
    assert "max_tokens" in joined and "truncated" in joined and "asked for 3 items, got 2" in joined


@pytest.mark.parametrize("weights, expected, note", [
    (["45%", "35%", "20%"], [0.45, 0.35, 0.20], "percentage"),
    ([45, 35, 20], [0.45, 0.35, 0.20], "percentages"),
    (["0.5", "0.3", "0.2"], [0.5, 0.3, 0.2], "string"),
    (["p = 0.5", "~0.3", "0.2 (unlikely)"], [0.5, 0.3, 0.2], "string"),
    (["1/2", "1/4", "1/4"], [0.5, 0.25, 0.25], "fraction"),
    ([0.5, -0.2, 0.5], [0.5, 0.5, 0.0], "negative"),
    ([250, 0.5, 0.5], [0.5, 0.25, 0.25], "clipped to 1"),
    ([0.6, "high", 0.4], [0.6, 0.4, 0.0], "no number"),
    ([0.6, True, 0.4], [0.6, 0.4, 0.0], "not a number"),
    ([0.6, "0.1 or 0.2", 0.4], [0.6, 0.4, 0.0], "several numbers"),
    ([0.6, None, 0.4], [0.6, 0.4, 0.0], "missing"),
    ([0.6, {"v": 1}, 0.4], [0.6, 0.4, 0.0], "not a number"),
    ([0.5, "1/0", 0.5], [0.5, 0.5, 0.0], "divides by zero"),
    ([0.5, 10**400, 0.5], [0.5, 0.5, 0.0], "too large for a float"),
    ([0.5, "9" * 400 + "/1", 0.5], [0.5, 0.5, 0.0], "not finite"),
])
def test_weights_are_repaired_and_the_repair_is_reported(weights, expected, note):
    text = json.dumps({"responses": [{"text": t, "probability": w} for t, w in zip("abc", weights)]})
    dist = parse_answer(text)
    assert sorted(dist.probabilities, reverse=True) == pytest.approx(expected)
    assert note in " ".join(dist.repairs)
    check_valid(dist)


def test_nan_and_infinity_literals_are_invalid_weights():
    dist = parse_answer('{"responses": [{"text": "a", "probability": NaN}, {"text": "b", "probability": Infinity},'
                        ' {"text": "c", "probability": 0.2}]}')
    assert dist.texts[0] == "c" and dist.probabilities == pytest.approx([1.0, 0.0, 0.0])
    assert "not finite" in " ".join(dist.repairs)


def test_all_zero_weights_fall_back_to_uniform_or_raise_when_asked():
    text = answer(("a", 0), ("b", 0.0), ("c", 0))
    dist = parse_answer(text)
    assert dist.probabilities == pytest.approx([1 / 3] * 3)
    assert "uniform" in " ".join(dist.repairs)
    with pytest.raises(VSParseError, match="every probability is zero"):
        parse_answer(text, all_zero="error")


def test_all_weights_missing_or_invalid_is_uniform():
    text = json.dumps({"responses": [{"text": "a"}, {"text": "b", "probability": "n/a"}]})
    dist = parse_answer(text)
    assert dist.probabilities == pytest.approx([0.5, 0.5])


def test_missing_texts_are_dropped_and_reported():
    text = json.dumps({"responses": [{"probability": 0.5}, {"text": "b", "probability": 0.3},
                                     {"text": ["x"], "probability": 0.1}, {"text": "   ", "probability": 0.1},
                                     {"text": 42, "probability": 0.1}, 7]})
    dist = parse_answer(text, k=6)
    assert dist.texts == ["b", "42"]
    joined = " ".join(dist.repairs)
    for note in ("no text field", "text is a list", "empty text", "text was a number", "not an object", "got 2"):
        assert note in joined


def test_other_shapes_of_the_candidate_list_are_read():
    assert parse_answer('["a", "b"]').texts == ["a", "b"]
    assert parse_answer('{"candidates": [{"response": "a", "prob": 0.9}, {"content": "b", "weight": 0.1}]}').texts == ["a", "b"]
    assert parse_answer('{"text": "only", "probability": 0.4}').texts == ["only"]
    assert parse_answer('[["a", 0.2], ["b", 0.8]]').texts == ["b", "a"]


def test_duplicate_texts_are_merged_adding_their_probabilities():
    dist = parse_answer(answer(("A cat.", 0.2), ("b", 0.5), ("a  CAT.", 0.2), ("c", 0.1)), k=4)
    assert dist.texts == ["b", "A cat.", "c"]
    assert dist.probabilities == pytest.approx([0.5, 0.4, 0.1])
    assert "duplicate" in " ".join(dist.repairs) and "asked for 4 items, got 3" in " ".join(dist.repairs)


def test_filter_keeps_probable_items_and_relaxes_to_min_k_survivors():
    text = answer(("a", 0.5), ("b", 0.3), ("c", 0.15), ("d", 0.05))
    kept = parse_answer(text, min_probability=0.1)
    assert kept.texts == ["a", "b", "c"] and "dropped 1" in " ".join(kept.repairs)
    assert kept.probabilities == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95])
    relaxed = parse_answer(text, min_probability=0.4, min_k_survivors=3)
    assert relaxed.texts == ["a", "b", "c"] and "kept the 3 most probable" in " ".join(relaxed.repairs)
    # More survivors asked for than there are items: all of them, no crash.
    assert parse_answer(text, min_probability=0.9, min_k_survivors=10).texts == ["a", "b", "c", "d"]


def test_filter_options_are_checked():
    with pytest.raises(ValueError, match="min_probability"):
        parse_answer(answer(("a", 1)), min_probability=2)
    with pytest.raises(ValueError, match="min_k_survivors"):
        parse_answer(answer(("a", 1)), min_k_survivors=0)
    with pytest.raises(ValueError, match="all_zero"):
        parse_answer(answer(("a", 1)), all_zero="ignore")


def test_ties_keep_the_models_order():
    assert parse_answer(answer(("x", 0.25), ("y", 0.5), ("z", 0.25))).texts == ["y", "x", "z"]


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   \n", "empty"),
    (None, "not text"),
    (b'{"responses": []}', "not text"),
    ("I cannot help with that.", "no JSON"),
    ("42", "got a number"),
    ("null", "got null"),
    ('"just a string"', "got a string"),
    ("Here are [5] jokes.", "no JSON"),
    ('{"responses": []}', "empty list"),
    ("[]", "empty list"),
    ('{"responses": "a, b, c"}', "no \"responses\" list"),
    ('{"foo": 1, "bar": 2}', "keys: 'foo', 'bar'"),
    ('{"responses": [1, 2.5, null]}', "none with a usable text"),
    ('{"responses": [{"text": ""}, {"text": "  "}]}', "none with a usable text"),
    ('{"responses": [{"text": "a", "probab', "no JSON"),
    ("[" * 50_000, "no JSON"),
    ("{" * 50_000, "no JSON"),
])
def test_hopeless_answers_raise_a_clear_error(text, message):
    with pytest.raises(VSParseError, match=re.escape(message)):
        parse_answer(text)


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["text", "probability", "responses", "reasoning", "p", "response", "x"]), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(value=_json)
def test_any_json_gives_a_valid_distribution_or_a_parse_error(value):
    try:
        dist = parse_answer(json.dumps(value), k=3, min_probability=0.1, min_k_survivors=2)
    except VSParseError as e:
        assert str(e)
    else:
        check_valid(dist)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list('{}[]",: 0.5abtext%-probabilityresponses\n\\')), max_size=80))
def test_any_text_gives_a_valid_distribution_or_a_parse_error(text):
    try:
        dist = parse_answer(text)
    except VSParseError as e:
        assert str(e)
    else:
        check_valid(dist)


# ------------------------------------------------------------------------------ Distribution


def dist_of(*probs) -> Distribution:
    return Distribution(tuple(Item(f"t{i}", p, p) for i, p in enumerate(probs)))


def test_distribution_refuses_to_be_empty_or_unnormalised():
    with pytest.raises(VSParseError, match="at least one item"):
        Distribution(())
    with pytest.raises(ValueError, match="sum to 1"):
        dist_of(0.5, 0.4)
    with pytest.raises(ValueError, match="sum to 1"):
        dist_of(1.5, -0.5)


def test_sample_is_reproducible_and_argmax_is_the_top_item():
    d = dist_of(0.4, 0.3, 0.2, 0.1)
    assert [d.sample(s).text for s in range(50)] == [d.sample(s).text for s in range(50)]
    assert d.argmax().text == "t0"
    assert d.sample(seed=3) == d.items[d.sample_index(3)]


N_DRAWS = 20_000


@pytest.mark.parametrize("mode", ["weight", "uniform", "softmax"])
def test_sample_frequencies_follow_the_weights(mode):
    """Each item's frequency over N_DRAWS seeds lies within 4 standard errors,
    4 * sqrt(p (1 - p) / N) (<= 0.014 at N = 20,000), of its draw weight; zero-weight items
    are never drawn. Seeds are fixed, so the test is deterministic."""
    d = dist_of(0.5, 0.3, 0.15, 0.05, 0.0)
    counts = [0] * len(d)
    for seed in range(N_DRAWS):
        counts[d.sample_index(seed, mode)] += 1
    weights = d.weights(mode)
    for count, p in zip(counts, weights):
        assert abs(count / N_DRAWS - p) <= 4 * math.sqrt(p * (1 - p) / N_DRAWS), (counts, weights)
    if mode == "weight":
        assert counts[-1] == 0
    assert math.isclose(sum(weights), 1.0)


def test_sample_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        dist_of(1.0).sample(0, mode="greedy")


def test_to_dict_is_json():
    d = parse_answer(json.dumps({"responses": [{"text": "a", "probability": "40%"}, {"text": "b", "probability": 0.6}]}),
                     meta={"method": "standard"})
    out = json.loads(json.dumps(d.to_dict()))
    assert out["items"][0] == {"text": "b", "probability": 0.6, "stated": 0.6}
    assert out["items"][1]["stated"] == "40%" and out["meta"] == {"method": "standard"}


# ------------------------------------------------------------------------------ clients (fakes)


class FakeLLM:
    """vllm.LLM.chat's interface: records the requests, answers from a list."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def chat(self, conversations, params, use_tqdm=False):
        self.calls.append((conversations, params))
        outs = []
        for _ in conversations:
            text, reason = self.answers.pop(0)
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, finish_reason=reason)]))
        return outs


def compact(*pairs):
    return json.dumps({"responses": [{"text": t, "probability": p} for t, p in pairs]}, separators=(",", ":"))


def test_offline_client_sends_the_regex_seed_and_sampler_args():
    llm = FakeLLM([(compact(("a", 0.6), ("b", 0.4)), "stop"), (compact(("c", 1)), "stop")])
    dists = vs.generate_offline_many(llm, ["p1", "p2"], k=2, seeds=[5, 6], sampler_args={"sampler": "edt"},
                                     max_text_chars=10, temperature=0.9)
    conversations, params = llm.calls[0]
    assert conversations[0][1]["content"] == "p1" and "Generate 2" in conversations[0][0]["content"]
    assert [p.seed for p in params] == [5, 6]
    assert all(p.extra_args == {"sampler": "edt"} and p.temperature == 0.9 for p in params)
    assert params[0].structured_outputs.regex == vs.answer_regex(2, max_text_chars=10)
    assert params[0].structured_outputs is not params[1].structured_outputs
    assert params[0].max_tokens == vs.answer_max_tokens(2, max_text_chars=10)
    assert dists[0].texts == ["a", "b"] and dists[0].repairs == ()
    assert dists[0].meta["sampler_args"] == {"sampler": "edt"} and dists[0].meta["seed"] == 5
    # The second answer has 1 item for k = 2: a repaired distribution, reported twice over.
    assert dists[1].texts == ["c"]
    assert "does not match the requested format" in dists[1].repairs[0]
    assert "asked for 2 items, got 1" in dists[1].repairs


def test_offline_multi_turn_feeds_back_the_answers():
    llm = FakeLLM([(compact(("a", 0.5), ("b", 0.3)), "stop"), (compact(("c", 0.2)), "stop")])
    dist = vs.generate_offline(llm, "joke", method="multi", k=3, m=2, seed=1, max_text_chars=10)
    assert len(llm.calls) == 2
    second, params = llm.calls[1][0][0], llm.calls[1][1]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert "1 more alternative" in second[3]["content"]
    assert params[0].seed != 1 and params[0].structured_outputs.regex == vs.answer_regex(1, max_text_chars=10)
    assert dist.texts == ["a", "b", "c"] and dist.probabilities == pytest.approx([0.5, 0.3, 0.2])
    assert dist.meta["m"] == 2 and dist.meta["finish_reasons"] == ["stop", "stop"]


def test_offline_errors_keep_returns_the_error_in_place():
    llm = FakeLLM([("not json", "stop"), (compact(("a", 1)), "stop")])
    out = vs.generate_offline_many(llm, ["p", "q"], k=1, errors="keep")
    assert isinstance(out[0], VSParseError) and isinstance(out[1], Distribution)
    with pytest.raises(VSParseError, match="no JSON"):
        vs.generate_offline_many(FakeLLM([("not json", "stop")]), ["p"], k=1)


def refusal(status, message):
    response = httpx.Response(status, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    cls = openai.BadRequestError if status == 400 else openai.InternalServerError
    return cls(message, response=response, body={"message": message})


class FakeClient:
    """openai.OpenAI's chat.completions.create: refuses what `refuse` says, records the calls,
    answers `text` (or, given a list, its texts in turn)."""

    def __init__(self, refuse, text):
        self.refuse, self.text, self.calls = refuse, text, []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **kwargs):
        self.calls.append(kwargs)
        error = self.refuse(kwargs)
        if error:
            raise error
        message = SimpleNamespace(content=self.text.pop(0) if isinstance(self.text, list) else self.text)
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")])


def test_openai_client_falls_back_from_structured_outputs_to_response_format():
    def refuse(kw):
        if "structured_outputs" in (kw.get("extra_body") or {}):
            return refusal(400, "unknown field structured_outputs")
    client = FakeClient(refuse, "```json\n" + answer(("x", 0.9), ("y", 0.1)) + "\n```")
    dist = vs.generate_openai(client, "m", "joke", k=2, seed=0)
    assert dist.texts == ["x", "y"]
    assert dist.meta["structured"] == "json_schema"
    assert "structured_outputs" in dist.meta["refused"][0]
    assert client.calls[1]["response_format"]["json_schema"]["schema"] == vs.answer_schema(2)


def test_openai_client_with_nothing_enforced_uses_the_tolerant_parser_or_says_why_it_failed():
    always = lambda kw: refusal(400, "no") if (kw.get("extra_body") or kw.get("response_format")) else None  # noqa: E731
    dist = vs.generate_openai(FakeClient(always, "Sure: " + answer(("x", 60), ("y", 40))), "m", "joke", k=2)
    assert dist.meta["structured"] == "none" and dist.probabilities == pytest.approx([0.6, 0.4])
    with pytest.raises(VSParseError, match="refused structured outputs"):
        vs.generate_openai(FakeClient(always, "I'd rather not."), "m", "joke", k=2)


def test_openai_client_reports_every_refusal_and_passes_other_errors_through():
    client = FakeClient(lambda kw: refusal(400, "edt_t0 must be > 0"), "")
    with pytest.raises(vs.VSServerError, match="refused every way") as info:
        vs.generate_openai(client, "m", "joke", sampler_args={"sampler": "edt", "edt_t0": -1})
    assert str(info.value).count("edt_t0 must be > 0") == 3
    assert all(c["extra_body"]["vllm_xargs"] == {"sampler": "edt", "edt_t0": -1} for c in client.calls)
    with pytest.raises(openai.InternalServerError):
        vs.generate_openai(FakeClient(lambda kw: refusal(500, "boom"), ""), "m", "joke")
    with pytest.raises(ValueError, match="structured"):
        vs.generate_openai(client, "m", "joke", structured="grammar")


def test_an_answer_cut_short_by_max_tokens_says_so():
    with pytest.raises(VSParseError, match="hit max_tokens before it was complete"):
        parse_answer('{   \n\n   "responses"\n  :  [\n\n  \t', finish_reason="length")


def test_openai_client_stops_at_a_refusal_that_names_another_parameter():
    client = FakeClient(lambda kw: refusal(400, "max_tokens=9999 cannot be greater than max_model_len=4096. "
                                               "(parameter=max_tokens, value=9999)"), "")
    with pytest.raises(vs.VSServerError, match="refused the request: .*parameter=max_tokens"):
        vs.generate_openai(client, "m", "joke", max_tokens=9999)
    assert len(client.calls) == 1 and client.calls[0]["max_tokens"] == 9999
    plain = FakeClient(lambda kw: None, answer(("a", 1)))
    vs.generate_openai(plain, "m", "joke", k=1)
    assert "max_tokens" not in plain.calls[0] and "seed" not in plain.calls[0] and "timeout" not in plain.calls[0]


def test_a_percent_list_with_a_negative_is_still_read_as_percent():
    dist = parse_answer(json.dumps({"responses": [{"text": t, "probability": w} for t, w in zip("abc", [60, -5, 40])]}))
    assert dist.probabilities == pytest.approx([0.6, 0.4, 0.0])


def test_offline_multi_turn_stops_asking_once_every_answer_failed():
    llm = FakeLLM([("no json here", "stop")])
    out = vs.generate_offline_many(llm, ["p"], method="multi", k=4, m=2, errors="keep")
    assert len(llm.calls) == 1 and isinstance(out[0], VSParseError) and "turn 1" in str(out[0])


# ----------------------------------------------------------------------- double encoding, wrappers

INNER = {"responses": [{"text": "cat", "probability": 0.6}, {"text": "dog", "probability": 0.4}]}


@pytest.mark.parametrize("text", [
    json.dumps(json.dumps(INNER)),  # "{\"responses\": ...}"
    json.dumps(json.dumps(json.dumps(INNER))),  # twice
    "Here you go: " + json.dumps(json.dumps(INNER)) + " Enjoy!",
    "```json\n" + json.dumps(json.dumps(INNER)) + "\n```",
])
def test_a_double_encoded_answer_is_decoded_again(text):
    dist = parse_answer(text, k=2)
    assert dist.texts == ["cat", "dog"] and dist.probabilities == pytest.approx([0.6, 0.4])
    assert "double-encoded" in " ".join(dist.repairs)
    check_valid(dist)


@pytest.mark.parametrize("wrapped, path", [
    ({"output": INNER}, "'output'"),
    ({"result": {"output": {"reasoning": "why", **INNER}}}, "'result' > 'output'"),
    ({"output": json.dumps(INNER)}, "'output'"),  # the wrapper holds the JSON as a string
    ({"status": "ok", "data": INNER}, "'data'"),
])
def test_a_list_nested_in_a_wrapper_object_is_found(wrapped, path):
    dist = parse_answer(json.dumps(wrapped), k=2)
    assert dist.texts == ["cat", "dog"] and dist.probabilities == pytest.approx([0.6, 0.4])
    assert f"nested under {path}" in " ".join(dist.repairs)
    if "result" in wrapped:
        assert dist.reasoning == "why"
    check_valid(dist)


def test_a_single_candidate_under_output_is_still_one_candidate():
    dist = parse_answer(json.dumps({"output": "a plain answer", "probability": 0.9}))
    assert dist.texts == ["a plain answer"] and dist.probabilities == [1.0]


def test_a_string_that_holds_no_json_is_refused_with_its_type():
    with pytest.raises(VSParseError, match="got a string"):
        parse_answer(json.dumps("no JSON in here"))


# ----------------------------------------------------------------------- weights above 1

def weighted(*weights) -> str:
    return json.dumps({"responses": [{"text": f"t{i}", "probability": w} for i, w in enumerate(weights)]})


def test_a_list_above_one_is_read_as_percentages_keeping_its_ratios():
    dist = parse_answer(weighted(40, 30, 20, 10))
    assert dist.probabilities == pytest.approx([0.4, 0.3, 0.2, 0.1])  # clipping would give 0.25 each
    assert "read the list as percentages" in " ".join(dist.repairs)
    # One bare number above 1 is enough: the small ones are percents too (0.5 -> 0.005).
    dist = parse_answer(weighted(50, 0.5, 30))
    assert dist.probabilities == pytest.approx([50 / 80.5, 30 / 80.5, 0.5 / 80.5])
    # 100 is still a percentage; the ratio 2:1 survives (clipping would make it 1:1).
    assert parse_answer(weighted(100, 50)).probabilities == pytest.approx([2 / 3, 1 / 3])


def test_percent_weights_are_absolute_for_the_filter():
    """The filter reads the repaired weights: 40 -> 0.4 passes 0.35, 30 -> 0.3 does not (read as
    weights normalised by their sum they would be 0.5 and 0.375, both passing)."""
    dist = parse_answer(weighted(40, 30, 10), min_probability=0.35)
    assert dist.texts == ["t0"]


def test_a_list_with_a_number_above_100_is_clipped():
    dist = parse_answer(weighted(100.5, 50))
    assert dist.probabilities == pytest.approx([0.5, 0.5])
    assert "clipped to 1" in " ".join(dist.repairs) and "percentages" not in " ".join(dist.repairs)


def test_the_normalisation_residue_keeps_tied_items_in_order():
    """Weights whose normalised sum is 1 + 2 ulps with the top two tied: the deficit goes where
    the order survives (folded into the top item it made the first less than the second)."""
    dist = parse_answer(weighted(0.837578, 0.837578, 0.556454))
    check_valid(dist)
    assert dist.texts[:2] == ["t0", "t1"]


# ----------------------------------------------------------------------- both clients, multi-turn


MULTI_TURNS = [compact(("a", 0.5), ("b", 0.3)), compact(("c", 0.2))]


def test_openai_multi_turn_feeds_back_the_answers_with_a_new_seed_per_turn():
    client = FakeClient(lambda kw: None, list(MULTI_TURNS))
    dist = vs.generate_openai(client, "m", "joke", method="multi", k=3, m=2, seed=4, tau=0.3, max_text_chars=10)
    first, second = client.calls
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][:2] == first["messages"] and second["messages"][2]["content"] == MULTI_TURNS[0]
    assert second["messages"][3]["content"] == vs.followup_message(1, tau=0.3)
    assert [c["seed"] for c in client.calls] == [4, 4 + SEED_STRIDE]
    assert [c["extra_body"]["structured_outputs"]["regex"] for c in client.calls] == [
        vs.answer_regex(2, max_text_chars=10), vs.answer_regex(1, max_text_chars=10)]
    assert dist.texts == ["a", "b", "c"] and dist.repairs == ()
    assert dist.meta["finish_reasons"] == ["stop", "stop"] and json.loads(dist.raw) == MULTI_TURNS


def test_both_clients_send_the_same_turns_and_seeds_and_describe_them_alike():
    """One plan, one conversation, one meta builder: the offline and the OpenAI client ask the
    same questions with the same seeds, and their meta differ only in what each one adds."""
    sampler_args = {"sampler": "edt"}
    kw = dict(method="multi", k=3, m=2, tau=0.3, temperature=0.9, top_p=0.95, max_text_chars=10,
              sampler_args=sampler_args)
    llm = FakeLLM([(text, "stop") for text in MULTI_TURNS])
    offline = vs.generate_offline(llm, "joke", seed=4, **kw)
    client = FakeClient(lambda kw: None, list(MULTI_TURNS))
    served = vs.generate_openai(client, "m", "joke", seed=4, **kw)
    sampler_args["sampler"] = "real"  # the caller's dict, changed afterwards, changes no record
    assert [conversations[0] for conversations, _ in llm.calls] == [c["messages"] for c in client.calls]
    assert [params[0].seed for _, params in llm.calls] == [c["seed"] for c in client.calls] == [4, 4 + SEED_STRIDE]
    assert offline.items == served.items and offline.raw == served.raw
    common = {"method": "multi", "k": 3, "tau": 0.3, "m": 2, "temperature": 0.9, "top_p": 0.95,
              "sampler_args": {"sampler": "edt"}, "seed": 4, "finish_reasons": ["stop", "stop"]}
    assert list(offline.meta) == ["method", "k", "tau", "m", "temperature", "top_p", "constraint",
                                  "sampler_args", "client", "seed", "finish_reasons"]
    assert list(served.meta) == ["method", "k", "tau", "m", "temperature", "top_p", "model", "structured",
                                 "refused", "sampler_args", "client", "seed", "finish_reasons"]
    assert offline.meta == {**common, "constraint": "regex", "client": "vllm.LLM"}
    assert served.meta == {**common, "model": "m", "structured": "vllm", "refused": [], "client": "openai"}


def test_unseeded_requests_send_no_seed_on_any_turn():
    llm = FakeLLM([(text, "stop") for text in MULTI_TURNS])
    vs.generate_offline(llm, "joke", method="multi", k=3, m=2)
    assert [params[0].seed for _, params in llm.calls] == [None, None]
    client = FakeClient(lambda kw: None, list(MULTI_TURNS))
    vs.generate_openai(client, "m", "joke", method="multi", k=3, m=2)
    assert all("seed" not in c for c in client.calls)


# ----------------------------------------------------------------------- the CLI's table


def test_the_candidates_table_marks_the_draw_and_wraps_long_texts():
    long = " ".join(["word"] * 40)
    dist = parse_answer(json.dumps({"responses": [{"text": "short", "probability": 0.25},
                                                  {"text": long, "probability": "75%"}, {"text": "none"}]}))
    lines = candidates_table(dist, drawn=1, width=30).splitlines()
    assert lines[0].split() == ["#", "prob", "stated", "text"]
    assert lines[2].startswith("   1   0.750       75%  word word")
    assert lines[3].strip() == "word " * 5 + "word" and lines[3].startswith(" " * 22)
    marked = [line for line in lines if line.startswith("->")]
    assert marked == [next(line for line in lines if line.endswith("short"))]
    assert marked[0].split()[1:4] == ["2", "0.250", "0.25"]
    assert lines[-1].split() == ["3", "0.000", "-", "none"]


def test_the_candidates_table_shows_a_stated_number_too_large_for_a_float():
    dist = parse_answer(json.dumps({"responses": [{"text": "a", "probability": 10**400}, {"text": "b", "probability": 1}]}))
    row = next(line for line in candidates_table(dist).splitlines() if line.endswith(" a"))
    assert row.split()[1:3] == ["0.000", "10000000"]
