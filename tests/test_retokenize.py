"""The cross-tokenizer path of REAL: incremental decode + tail re-tokenisation gives the windows
that re-tokenising the whole decoded text gives, step by step."""

import inspect
import textwrap

import numpy as np
import pytest

from real_vllm.thf.retokenize import Retokenizer, TextHistory
from real_vllm.thf.runtime import SHIPPED_CHECKPOINT

WINDOW = 40


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir):
    from transformers import AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    smollm2 = AutoTokenizer.from_pretrained(str(SHIPPED_CHECKPOINT))
    return tiny, smollm2


def corpus_text() -> str:
    """Real prose with multi-byte characters, runs of spaces and newlines, and digits."""
    docs = [inspect.getdoc(f) for f in (textwrap.dedent, textwrap.fill, np.linspace, inspect.signature)]
    extra = "Café déjà vu — naïve façade, 北京 and Zürich: 3.14159 m²…  two  spaces\n\n\ttab."
    return extra + " " + "\n\n".join(d for d in docs if d) + "\n" + extra + " " + docs[0]


def full_window(served, thf, ids):
    """The last WINDOW THF tokens of the whole plain text (the served special tokens dropped),
    up to its last complete character."""
    text = served.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).rstrip("\ufffd")
    return thf(text, add_special_tokens=False)["input_ids"][-WINDOW:]


@pytest.mark.parametrize("direction", ["tiny->smollm2", "smollm2->tiny"])
@pytest.mark.parametrize("prompt_len", [1, 30, 1200])
def test_incremental_windows_equal_the_whole_text_retokenised(tokenizers, direction, prompt_len):
    served, thf = tokenizers if direction == "tiny->smollm2" else tokenizers[::-1]
    ids = served(corpus_text() * 2, add_special_tokens=False)["input_ids"]
    assert len(ids) > prompt_len + 400
    retok = Retokenizer(served, thf, WINDOW)
    history = TextHistory()
    # A prompt, then one new token per step; two rows share the batch calls (the second row is
    # fed every other step, as when a row waits while others run).
    other, other_len = TextHistory(), 5
    length = prompt_len
    mismatches = []
    while length <= min(len(ids), prompt_len + 400):
        start = retok.start(history, length)
        rows, new = [history], [ids[start:length]]
        if length % 2 == 0 and other_len < len(ids):
            rows.append(other)
            new.append(ids[retok.start(other, other_len):other_len])
        got = retok.windows(rows, new)
        want = full_window(served, thf, ids[:length])
        if got[0] != want:
            mismatches.append(length)
        if len(rows) == 2:
            assert got[1] == full_window(served, thf, ids[:other_len])
            other_len += 1
        length += 1
    assert not mismatches, f"windows differ from the whole text's at lengths {mismatches[:10]}"


def test_memory_stays_bounded_on_a_long_sequence(tokenizers):
    served, thf = tokenizers
    ids = served(corpus_text() * 20, add_special_tokens=False)["input_ids"]
    retok, history = Retokenizer(served, thf, WINDOW), TextHistory()
    for length in range(1, len(ids), 7):
        retok.windows([history], [ids[retok.start(history, length):length]])
        assert len(history.text) <= 4 * retok.tail_chars and len(history.context) <= 4 and len(history.pending) <= 8
    assert history.cut and history.fed == length


def chat_text(served) -> str:
    """Two turns through the served tokenizer's chat template, markers included."""
    docs = corpus_text().split("\n\n")
    messages = [
        {"role": "user", "content": docs[0]},
        {"role": "assistant", "content": docs[1]},
        {"role": "user", "content": docs[2]},
        {"role": "assistant", "content": "\n\n".join(docs[3:])},
    ]
    return served.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("direction", ["tiny->smollm2", "smollm2->tiny"])
@pytest.mark.parametrize("prompt_len", [1, 300])
def test_chat_markers_do_not_reach_the_thf(tokenizers, direction, prompt_len):
    """The served ids hold a chat template's special tokens; the THF reads the plain text:
    every window equals the last WINDOW THF tokens of the text with the markers removed."""
    served, thf = tokenizers if direction == "tiny->smollm2" else tokenizers[::-1]
    text = chat_text(served)
    markers = [t for t in served.all_special_tokens if t in text]
    assert "<|im_start|>" in markers and "<|im_end|>" in markers
    ids = served(text, add_special_tokens=False)["input_ids"]
    special = {served.convert_tokens_to_ids(t) for t in markers}
    assert sum(i in special for i in ids) >= 8, "the served ids must hold the markers as special ids"
    plain = text
    for t in markers:
        plain = plain.replace(t, "")
    retok, history = Retokenizer(served, thf, WINDOW), TextHistory()
    thf_special = set(thf.all_special_ids)
    length, mismatches = prompt_len, []
    while length <= len(ids):
        got = retok.windows([history], [ids[retok.start(history, length):length]])[0]
        if got != full_window(served, thf, ids[:length]):
            mismatches.append(length)
        assert not thf_special & set(got), f"a THF special token in the window at length {length}"
        length += 1
    assert not mismatches, f"windows differ from the plain text's at lengths {mismatches[:10]}"
    # The last window, against the plain text made without the served decoder.
    assert got == thf(plain, add_special_tokens=False)["input_ids"][-WINDOW:]
    assert history.fed == len(ids)


def sentencepiece_tokenizer():
    """A small BPE with a Metaspace (SentencePiece-style) decoder, which strips the leading
    space of the first token it decodes, and chat markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator([corpus_text()] * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=specials[3:])


def test_a_run_of_markers_does_not_glue_words_on_a_sentencepiece_decoder(tokenizers):
    """More markers in a row than the decoded context holds: the word after them keeps its
    space (the context is made of text tokens only)."""
    served, thf = sentencepiece_tokenizer(), tokenizers[1]
    words = corpus_text().split()[:120]
    markers = [served.convert_tokens_to_ids(t) for t in ("<|im_end|>", "</s>", "<s>", "<|im_start|>", "<|im_end|>")]
    ids = []
    for i in range(0, len(words), 6):
        ids += served(" ".join(words[i:i + 6]), add_special_tokens=False)["input_ids"] + markers
    retok, history = Retokenizer(served, thf, WINDOW), TextHistory()
    mismatches = []
    for length in range(1, len(ids) + 1):
        got = retok.windows([history], [ids[retok.start(history, length):length]])[0]
        if got != full_window(served, thf, ids[:length]):
            mismatches.append(length)
    assert not mismatches, f"windows differ from the plain text's at lengths {mismatches[:10]}"
    assert got == thf(served.decode(ids, skip_special_tokens=True), add_special_tokens=False)["input_ids"][-WINDOW:]
