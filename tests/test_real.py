"""REAL in the logits processor: thresholds from the THF on each row's window, the nucleus
on the served logits; start-up errors for a missing, corrupt or mismatched THF."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from real_vllm import reference
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods.edt import MIN_SCALE
from real_vllm.thf import curves
from real_vllm.thf.model import THFModel
from tests.mrv2 import MRV2
from tests.thf_fixtures import build_tiny_thf


@pytest.fixture(scope="module")
def thf_dir(tiny_model_dir, tmp_path_factory):
    return build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)


def vllm_config(tiny_model_dir, **additional):
    return SimpleNamespace(
        additional_config=additional,
        scheduler_config=SimpleNamespace(max_num_seqs=8),
        model_config=SimpleNamespace(tokenizer=str(tiny_model_dir)),
    )


def direct_threshold(thf_dir, tokens, p0, decay):
    """p_t from a plain THF forward on the unpadded window: the truth the processor must hit."""
    model = THFModel.load(thf_dir)
    window = torch.tensor(tokens[-model.config.window:])[None]
    with torch.inference_mode():
        params = model(window)[:, -1]
    d = curves.residual_entropy(params, model.config.s_ref, model.config.curve)
    return curves.threshold(d, p0, decay)


def real(p0=0.8, decay=0.5, sampler="real", **kw):
    return SamplingParams(extra_args={"sampler": sampler, "real_p0": p0, "real_decay_temperature": decay, **kw})


def test_v1_thresholds_equal_a_direct_thf_forward(tiny_model_dir, thf_dir):
    proc = RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(thf_dir)), torch.device("cpu"), False)
    vocab = 1000
    rng = np.random.default_rng(0)
    histories = [  # (prompt, output): short, long (window cuts), output longer than the window
        (rng.integers(3, vocab, 5).tolist(), rng.integers(3, vocab, 2).tolist()),
        (rng.integers(3, vocab, 70).tolist(), rng.integers(3, vocab, 10).tolist()),
        (rng.integers(3, vocab, 3).tolist(), rng.integers(3, vocab, 45).tolist()),
        (rng.integers(3, vocab, 8).tolist(), []),
    ]
    params = [real(0.9, 0.7), SamplingParams(), real(0.6, 2.0, sampler="edt+real", edt_t0=0.8), real(1.0, 0.3)]
    proc.update_state(BatchUpdate(4, removed=[], added=[(i, p, h[0], h[1]) for i, (p, h) in enumerate(zip(params, histories))], moved=[]))
    logits = torch.randn(4, vocab) * 3
    out = proc.apply(logits.clone())
    assert torch.equal(out[1], logits[1]), "a plain row was touched"
    for row in (0, 2, 3):
        args = params[row].extra_args
        prompt, output = histories[row]
        p_t = direct_threshold(thf_dir, prompt + output, args["real_p0"], args["real_decay_temperature"])
        x = logits[row:row + 1]
        if args["sampler"] == "edt+real":
            x, _ = reference.apply_edt(x, args["edt_t0"], 0.8, 1.0, MIN_SCALE)
        want = reference.top_p_mask(x, p_t.reshape(1))
        assert torch.equal(out[row].isfinite(), want[0].isfinite()), f"row {row}: another nucleus"
        torch.testing.assert_close(out[row][want[0].isfinite()], want[0][want[0].isfinite()])
    # Output grows (vLLM appends to the live list) and rows move: the windows follow.
    histories[0][1].append(7)
    proc.update_state(BatchUpdate(3, removed=[1], added=[], moved=[(3, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    logits = torch.randn(3, vocab) * 3
    out = proc.apply(logits.clone())
    for row, src in ((0, 0), (1, 3)):
        args = params[src].extra_args
        p_t = direct_threshold(thf_dir, histories[src][0] + histories[src][1], args["real_p0"], args["real_decay_temperature"])
        want = reference.top_p_mask(logits[row:row + 1], p_t.reshape(1))
        assert torch.equal(out[row].isfinite(), want[0].isfinite())


def test_top_p_decay_rows_skip_the_thf_and_the_others_still_get_their_forecast(tiny_model_dir, thf_dir, monkeypatch):
    proc = RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(thf_dir)), torch.device("cpu"), False)
    vocab = 1000
    histories = [([5, 6, 7], [8]), ([9, 10], [11, 12]), ([13], [])]
    params = [real(0.9, 1e9), real(0.7, 1.5), real(0.6, 1e30)]
    proc.update_state(BatchUpdate(3, removed=[], added=[(i, p, *h) for i, (p, h) in enumerate(zip(params, histories))], moved=[]))
    forwarded_rows = []
    original = proc.thf.residual_entropy
    monkeypatch.setattr(proc.thf, "residual_entropy", lambda w, n: forwarded_rows.append(w.shape[0]) or original(w, n))
    logits = torch.randn(3, vocab) * 3
    out = proc.apply(logits.clone())
    assert forwarded_rows == [1], "only the row with a finite decay needs the THF"
    for row, p_t in ((0, torch.tensor([0.9])), (2, torch.tensor([0.6])),
                     (1, direct_threshold(thf_dir, [9, 10, 11, 12], 0.7, 1.5).reshape(1))):
        want = reference.top_p_mask(logits[row:row + 1], p_t)
        assert torch.equal(out[row].isfinite(), want[0].isfinite()), f"row {row}"
    # Every REAL row at top-p decay: no THF forward at all.
    proc.update_state(BatchUpdate(1, removed=[1, 2], added=[], moved=[]))
    forwarded_rows.clear()
    proc.apply(torch.randn(1, vocab))
    assert forwarded_rows == []


def test_v2_windows_from_the_runner_token_history(tiny_model_dir, thf_dir):
    rng = np.random.default_rng(1)
    mrv2 = MRV2(max_num_reqs=6, max_model_len=128, vocab_size=1000)
    mrv2.build(RealVllmLogitsProcessor, vllm_config(tiny_model_dir, real_thf=str(thf_dir)))
    for req_id, n in (("a", 12), ("b", 90), ("c", 3)):  # b: longer than the window
        mrv2.add_request(req_id, rng.integers(3, 1000, n).tolist(), real(0.85, 0.6))
    mrv2.apply_staged_writes()
    order = ["c", "a", "b"]
    for _ in range(2):  # the step after the prefill, then a decode step
        logits = torch.randn(3, 1000) * 3
        out = mrv2.apply(logits, mrv2.context(order))
        for row, req_id in enumerate(order):
            p_t = direct_threshold(thf_dir, mrv2.tokens(req_id), 0.85, 0.6)
            want = reference.top_p_mask(logits[row:row + 1], p_t.reshape(1))
            assert torch.equal(out[row].isfinite(), want[0].isfinite())
            mrv2.commit(req_id, [int(rng.integers(3, 1000))])


def test_startup_errors_say_what_to_do(tiny_model_dir, thf_dir, tmp_path, monkeypatch):
    from real_vllm.thf import runtime

    monkeypatch.delenv(runtime.ENV_CHECKPOINT, raising=False)
    monkeypatch.setattr(runtime, "SHIPPED_CHECKPOINT", tmp_path / "no-shipped-thf")
    with pytest.raises(ValueError, match="--real-thf"):
        RealVllmLogitsProcessor(vllm_config(tiny_model_dir, sampler="real"), torch.device("cpu"), False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "thf_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load the THF"):
        RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(broken)), torch.device("cpu"), False)
    with pytest.raises(ValueError, match="does not exist"):
        RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(tmp_path / "nowhere")), torch.device("cpu"), False)
    from tests.tiny_model import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other-tokenizer", vocab_size=700)
    with pytest.raises(ValueError, match="another tokenizer"):
        RealVllmLogitsProcessor(vllm_config(other, real_thf=str(thf_dir)), torch.device("cpu"), False)


def test_shipped_thf_for_another_tokenizer_only_disables_real(tiny_model_dir, thf_dir, tmp_path, monkeypatch):
    from real_vllm.thf import runtime
    from tests.tiny_model import build_tiny_llama

    monkeypatch.delenv(runtime.ENV_CHECKPOINT, raising=False)
    monkeypatch.setattr(runtime, "SHIPPED_CHECKPOINT", thf_dir)
    assert RealVllmLogitsProcessor(vllm_config(tiny_model_dir), torch.device("cpu"), False).thf is not None
    other = build_tiny_llama(tmp_path / "other-tokenizer", vocab_size=700)
    assert RealVllmLogitsProcessor(vllm_config(other), torch.device("cpu"), False).thf is None
    with pytest.raises(ValueError, match="another tokenizer"):
        RealVllmLogitsProcessor(vllm_config(other, sampler="real"), torch.device("cpu"), False)


# ----------------------------------------------------------------------------- cross-tokenizer

@pytest.fixture(scope="module")
def shipped_thf():
    from real_vllm.thf.runtime import SHIPPED_CHECKPOINT

    return SHIPPED_CHECKPOINT


def retokenised_threshold(served, thf_dir, served_ids, p0, decay):
    """p_t from the THF on the whole served text re-tokenised with the THF's tokenizer; tokens
    that end inside a character wait for the rest of it (real_vllm/thf/retokenize.py)."""
    from transformers import AutoTokenizer

    text = served.decode(served_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).rstrip("\ufffd")
    ids = AutoTokenizer.from_pretrained(str(thf_dir))(text, add_special_tokens=False)["input_ids"]
    return direct_threshold(thf_dir, ids, p0, decay)


def assert_nucleus(out_row, logits_row, p_t):
    want = reference.top_p_mask(logits_row[None], p_t.reshape(1))[0]
    assert torch.equal(out_row.isfinite(), want.isfinite())


def test_cross_tokenizer_thresholds_follow_the_retokenised_text(tiny_model_dir, shipped_thf):
    """The tiny model (its own BPE) served with the SmolLM2 THF: mismatch refused without
    real_retokenize, and with it every step's p_t is the THF's on the re-tokenised text."""
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="--real-retokenize"):
        RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(shipped_thf)), torch.device("cpu"), False)
    proc = RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(shipped_thf), real_retokenize=True),
                                   torch.device("cpu"), False)
    served = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    vocab = len(served)
    texts = ["Return the list of all the values in the mapping, in order; the caller owns it.",
             "Zürich — 北京: naïve façade " * 40, "If"]
    prompts = [served(t, add_special_tokens=False)["input_ids"] for t in texts]
    outputs = [[], [], []]
    params = [real(0.9, 0.5), real(0.8, 1.0), SamplingParams()]
    proc.update_state(BatchUpdate(3, removed=[], added=[(i, p, prompts[i], outputs[i]) for i, p in enumerate(params)], moved=[]))
    rng = np.random.default_rng(3)
    continuation = served(" and then the value é is returned to the caller 北 unless", add_special_tokens=False)["input_ids"]
    for step in range(len(continuation)):
        logits = torch.from_numpy(rng.standard_normal((3, vocab)).astype(np.float32)) * 2
        out = proc.apply(logits.clone())
        for row in (0, 1):
            args = params[row].extra_args
            p_t = retokenised_threshold(served, shipped_thf, prompts[row] + outputs[row], args["real_p0"], args["real_decay_temperature"])
            assert_nucleus(out[row], logits[row], p_t)
        assert torch.equal(out[2], logits[2])
        for row in range(3):  # vLLM appends the sampled token to the live output list
            outputs[row].append(continuation[step])


def test_cross_tokenizer_v2_reads_the_runner_token_history(tiny_model_dir, shipped_thf):
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = served("The value of the key is returned; otherwise a KeyError — é 北 — is raised. " * 6,
                 add_special_tokens=False)["input_ids"]
    other = served("Zürich: a naïve façade, 3.5 m² — " * 12, add_special_tokens=False)["input_ids"]
    mrv2 = MRV2(max_num_reqs=4, max_model_len=max(len(ids), len(other)) + 8, vocab_size=len(served))
    mrv2.build(RealVllmLogitsProcessor, vllm_config(tiny_model_dir, real_thf=str(shipped_thf), real_retokenize=True))
    sequences = {"a": ids, "b": other}
    fed = {"a": 10, "b": 25}
    for req_id, n in fed.items():
        mrv2.add_request(req_id, sequences[req_id][:n], real(0.85, 0.6))
    mrv2.apply_staged_writes()
    order = ["b", "a"]
    for _ in range(30):  # each step the runner has one more token of a, two more of b
        logits = torch.randn(2, len(served)) * 2
        out = mrv2.apply(logits, mrv2.context(order))
        for row, req_id in enumerate(order):
            p_t = retokenised_threshold(served, shipped_thf, mrv2.tokens(req_id), 0.85, 0.6)
            assert_nucleus(out[row], logits[row], p_t)
        for req_id, k in (("a", 1), ("b", 2)):
            mrv2.commit(req_id, sequences[req_id][fed[req_id]:fed[req_id] + k])
            fed[req_id] += k


def test_serve_flags_fold_into_additional_config(tmp_path, monkeypatch):
    """`--sampler real --real-thf REL --real-retokenize` reach additional_config (a THF folder
    made absolute, a shipped checkpoint's name kept); a flag that contradicts --additional-config is refused."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from real_vllm.integration.plugin import register

    register()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thf").mkdir()
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--model", "m", "--sampler", "real", "--real-thf", "thf", "--real-retokenize"])
    config = EngineArgs.from_cli_args(args).additional_config
    assert config == {"sampler": "real", "real_thf": str(tmp_path / "thf"), "real_retokenize": True}
    # A shipped checkpoint's name is no folder here: it reaches the engine as the name.
    named = EngineArgs.from_cli_args(parser.parse_args(["--model", "m", "--real-thf", "smollm2-depth"]))
    assert named.additional_config == {"real_thf": "smollm2-depth"}
    assert "real_retokenize" not in EngineArgs.from_cli_args(parser.parse_args(["--model", "m"])).additional_config
    clash = parser.parse_args(["--model", "m", "--sampler", "edt", "--additional-config", '{"sampler": "real"}'])
    with pytest.raises(ValueError, match="--sampler edt conflicts"):
        EngineArgs.from_cli_args(clash)
