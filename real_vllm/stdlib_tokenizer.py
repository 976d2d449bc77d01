"""A real byte-level BPE tokenizer that every machine can rebuild offline: trained on docstrings
of the Python standard library.

The test suite's tiny model (tests/tiny_model.py) and the THF benchmark's cross-tokenizer case
(benchmarks/bench_thf.py) use it as "a tokenizer other than SmolLM2's". Training depends only on
the listed stdlib source files, i.e. on the Python version, and takes about a second.

Special tokens: <|endoftext|> (unk), <|im_start|> (bos), <|im_end|> (eos and pad), ids 0, 1, 2,
with a ChatML chat template.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Pure-Python stdlib modules with plenty of prose in their docstrings.
CORPUS_MODULES = (
    "argparse", "calendar", "collections", "configparser", "datetime", "difflib", "email.message",
    "enum", "fractions", "functools", "http.client", "inspect", "json", "logging", "optparse",
    "pathlib", "pydoc", "random", "re", "shutil", "smtplib", "statistics", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "typing", "unittest.case", "urllib.request", "zipfile",
)


def docstring_corpus() -> list[str]:
    """Docstrings of CORPUS_MODULES, read from their source files with ast.

    Parsing the files rather than reading __doc__ of live objects matters: other libraries patch
    stdlib objects (importing torch replaces inspect.getsourcefile), which would make the corpus,
    and so the tokenizer, depend on what the process imported before.
    """
    texts = []
    for name in CORPUS_MODULES:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


def train_bpe(vocab_size: int):
    """The byte-level BPE (a tokenizers.Tokenizer) with SPECIAL_TOKENS as ids 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docstring_corpus(), trainer=trainer)
    # Models built on it (zeroed lm_head rows, config ids) rely on the special tokens being first.
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError("the BPE trainer did not put the special tokens first")
    return tok


def tokenizer_config() -> dict:
    """tokenizer_config.json of a saved folder: the special tokens' roles and the chat template."""
    endoftext, im_start, im_end = SPECIAL_TOKENS
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "bos_token": im_start,
        "eos_token": im_end,
        "pad_token": im_end,
        "unk_token": endoftext,
        "chat_template": CHAT_TEMPLATE,
    }


def stdlib_tokenizer(vocab_size: int = 1024):
    """The tokenizer as a transformers PreTrainedTokenizerFast, built in memory."""
    from transformers import PreTrainedTokenizerFast

    config = tokenizer_config()
    roles = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template",
                                    "clean_up_tokenization_spaces", "model_max_length")}
    return PreTrainedTokenizerFast(tokenizer_object=train_bpe(vocab_size), **roles)
