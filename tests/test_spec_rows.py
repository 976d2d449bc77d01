"""Speculative-decoding rows under Model Runner V2, on vLLM's own RequestState and LogitsContext
(tests/mrv2.py): a request with k drafts owns k + 1 consecutive rows; each row must get its own
request's transform, REAL's window ending at the token the row was fed (the request's drafts
before it included); placeholders never reach the THF, in MRV2 and in V1's async lists."""

import numpy as np
import pytest
import torch
from vllm.v1.sample.logits_processor import BatchUpdate

from real_vllm import reference
from real_vllm.integration.early_processor import EarlyLayerLogitsProcessor
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.integration.windows import WindowReader
from real_vllm.methods.edt import MIN_SCALE
from tests import test_early_processor as early
from tests.mrv2 import MRV2
from tests.test_processor import PLAIN, config, edt, expected_row
from tests.test_real import direct_threshold, real, vllm_config
from tests.thf_fixtures import build_tiny_thf

VOCAB = 1000
# (request, drafts): 0-3 drafts per request, in batch order.
LAYOUT = [("a", [11, 12, 13]), ("b", []), ("c", [21]), ("d", [31, 32]), ("e", [])]


@pytest.fixture(scope="module")
def thf_dir(tiny_model_dir, tmp_path_factory):
    return build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)


def step(mrv2, params, rng, layout=LAYOUT):
    """Add the requests of ``layout`` with ``params`` (request -> SamplingParams), flush, and
    return the step's context and, per row, (request, drafts fed before the row's sample)."""
    for r, _ in layout:
        mrv2.add_request(r, rng.integers(3, VOCAB, int(rng.integers(3, 60))).tolist(), params[r])
    mrv2.apply_staged_writes()
    ctx = mrv2.context([r for r, _ in layout], dict(layout))
    rows = [(r, d[:j]) for r, d in layout for j in range(len(d) + 1)]
    assert len(rows) == ctx.expanded_idx_mapping.shape[0] > len(layout)
    return ctx, rows


def test_edt_every_draft_row_gets_its_request_temperature():
    mrv2 = MRV2(num_speculative_steps=3)
    mrv2.build(RealVllmLogitsProcessor, config())
    params = {"a": edt(edt_t0=0.6, edt_theta=1.5), "b": PLAIN, "c": edt(edt_n=0.3), "d": PLAIN, "e": edt(edt_t0=1.3)}
    ctx, rows = step(mrv2, params, np.random.default_rng(0))
    x = torch.randn(len(rows), VOCAB) * 3
    out = mrv2.apply(x, ctx)
    for i, (r, _) in enumerate(rows):
        torch.testing.assert_close(out[i], expected_row(x[i], params[r]), rtol=2e-4, atol=1e-6)
        if params[r] is PLAIN:
            assert torch.equal(out[i], x[i]), f"row {i} of plain request {r} was touched"


@pytest.mark.parametrize("mix", ["every", "mixed", "mixed_top_p"])
def test_real_draft_rows_read_the_drafts_before_them(tiny_model_dir, thf_dir, mix, monkeypatch):
    mrv2 = MRV2(num_speculative_steps=3)
    proc = mrv2.build(RealVllmLogitsProcessor, vllm_config(tiny_model_dir, real_thf=str(thf_dir)))
    params = {r: real(0.8 + 0.03 * i, 0.4 + 0.2 * i) for i, (r, _) in enumerate(LAYOUT)}
    if mix != "every":
        params["b"] = PLAIN
        params["a"] = PLAIN if mix == "mixed" else real(0.7, 1e12)  # a: rows 0-3
        params["d"] = edt(edt_t0=0.5, sampler="edt+real", real_p0=0.9, real_decay_temperature=0.8)
    ctx, rows = step(mrv2, params, np.random.default_rng(1))
    seen = []
    original = proc.thf.residual_entropy
    monkeypatch.setattr(proc.thf, "residual_entropy", lambda w, n: seen.append(w.clone()) or original(w, n))
    x = torch.randn(len(rows), VOCAB) * 3
    out = mrv2.apply(x, ctx)
    assert len(seen) == 1 and seen[0].shape[0] == len(rows), "one forward over the rows"
    for i, (r, fed) in enumerate(rows):
        args = params[r].extra_args or {}
        if "real" not in args.get("sampler", "none"):
            torch.testing.assert_close(out[i], expected_row(x[i], params[r]), rtol=2e-4, atol=1e-6)
            continue
        p0, decay = args["real_p0"], args["real_decay_temperature"]
        p_t = torch.tensor([p0]) if decay >= 1e9 else direct_threshold(thf_dir, mrv2.tokens(r) + fed, p0, decay).reshape(1)
        row = x[i:i + 1]
        if args["sampler"] == "edt+real":
            row, _ = reference.apply_edt(row, args["edt_t0"], 0.8, 1.0, MIN_SCALE)
        want = reference.top_p_mask(row, p_t)
        assert torch.equal(out[i].isfinite(), want[0].isfinite()), f"row {i} (request {r}, drafts {fed})"


def test_real_placeholder_drafts_never_reach_the_thf(tiny_model_dir, thf_dir, monkeypatch):
    """Drafts of a step that starts inside the prefill are -1 (their samples are rejected)."""
    mrv2 = MRV2(num_speculative_steps=3)
    proc = mrv2.build(RealVllmLogitsProcessor, vllm_config(tiny_model_dir, real_thf=str(thf_dir)))
    layout = [("a", [-1, -1, -1]), ("b", [41])]
    ctx, rows = step(mrv2, {"a": real(), "b": PLAIN}, np.random.default_rng(2), layout)
    seen = []
    original = proc.thf.residual_entropy
    monkeypatch.setattr(proc.thf, "residual_entropy", lambda w, n: seen.append((w.clone(), n.clone())) or original(w, n))
    out = mrv2.apply(torch.randn(len(rows), VOCAB), ctx)
    windows, lengths = seen[0]
    assert (windows >= 0).all()
    width = proc.thf.window
    committed = mrv2.tokens("a")[-width:]
    for row in range(4):  # every row of "a" reads a's committed tokens
        assert windows[row, width - len(committed):].tolist() == committed
        assert int(lengths[row]) == len(committed)
    assert out.isfinite().any(-1).all()


def test_sled_and_dola_draft_rows():
    gen = torch.Generator().manual_seed(3)
    mrv2 = MRV2(num_speculative_steps=3)
    proc = mrv2.build(EarlyLayerLogitsProcessor, early.config())
    params = {"a": early.p(sampler="dola"), "b": early.p(sampler="none"), "c": early.p(sled_k=4),
              "d": early.p(), "e": early.p(sampler="dola", dola_relative_top=0.3)}
    ctx, rows = step(mrv2, params, np.random.default_rng(4))
    by_slot = {mrv2.slot(r): q for r, q in params.items()}
    early.check(proc, by_slot, gen, ctx, ctx.expanded_idx_mapping.tolist())


def test_v1_async_placeholders_never_reach_the_thf(tiny_model_dir, thf_dir, monkeypatch):
    """V1 with async scheduling: the live output lists end in -1 until the host has the ids."""
    proc = RealVllmLogitsProcessor(vllm_config(tiny_model_dir, real_thf=str(thf_dir)), torch.device("cpu"), False)
    prompt, output = [5, 6, 7, 8], [9, 10, -1]
    proc.update_state(BatchUpdate(1, removed=[], added=[(0, real(0.9, 0.6), prompt, output)], moved=[]))
    seen = []
    original = proc.thf.residual_entropy
    monkeypatch.setattr(proc.thf, "residual_entropy", lambda w, n: seen.append((w.clone(), n.clone())) or original(w, n))
    logits = torch.randn(1, VOCAB) * 3
    out = proc.apply(logits.clone())
    windows, lengths = seen[-1]
    assert windows[0, -int(lengths[0]):].tolist() == [5, 6, 7, 8, 9, 10]
    want = reference.top_p_mask(logits, direct_threshold(thf_dir, [5, 6, 7, 8, 9, 10], 0.9, 0.6).reshape(1))
    assert torch.equal(out[0].isfinite(), want[0].isfinite())
    output[-1:] = [11, -1, -1]  # the placeholder filled in, two more pending (async spec decode)
    proc.apply(logits.clone())
    windows, lengths = seen[-1]
    assert windows[0, -int(lengths[0]):].tolist() == [5, 6, 7, 8, 9, 10, 11]


def test_v1_cross_tokenizer_history_skips_placeholders(tiny_model_dir, monkeypatch):
    from real_vllm.thf.retokenize import Retokenizer, TextHistory
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = served("The value of the key is returned; otherwise a KeyError is raised.", add_special_tokens=False)["input_ids"]
    retok = Retokenizer(served, served, window=16)
    reader = WindowReader(16, torch.device("cpu"), retokenizer=retok)
    prompt, output = ids[:4], ids[4:7] + [-1, -1]
    kept = [(prompt, output, TextHistory())]
    with_placeholders = reader.retokenized(kept, np.array([0]))
    clean = TextHistory()
    assert with_placeholders == retok.windows([clean], [ids[:7]])
    output[-2:] = ids[7:9]  # filled in: the history takes them next step, none lost
    assert reader.retokenized(kept, np.array([0])) == retok.windows([clean], [ids[7:9]])


def test_the_config_fakes_name_fields_of_vllms_config_classes():
    """The tests fake VllmConfig with SimpleNamespace (a real one needs a model); the fields they
    fake must stay fields of vLLM's classes."""
    from vllm.config import ModelConfig, SchedulerConfig, VllmConfig

    fields = {cls: set(cls.__dataclass_fields__) for cls in (VllmConfig, SchedulerConfig, ModelConfig)}
    assert {"additional_config", "scheduler_config", "model_config", "speculative_config"} <= fields[VllmConfig]
    assert "max_num_seqs" in fields[SchedulerConfig]
    assert {"tokenizer", "hf_config"} <= fields[ModelConfig]
