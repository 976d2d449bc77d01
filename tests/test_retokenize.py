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
    """The last WINDOW THF tokens of the whole text, up to its last complete character."""
    text = served.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).rstrip("\ufffd")
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
