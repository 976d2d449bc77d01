"""Observability: the start-up summary in vLLM's log format and real_vllm's metrics on /metrics
of a live `real-vllm serve` (EDT default, a tiny THF for REAL); the device histograms of a
processor without an engine."""

import re
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import openai
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from real_vllm import reference
from real_vllm.integration import observability, step_timing
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods.edt import MIN_SCALE

# ----------------------------------------------------------------------------- without an engine


def test_edt_temperatures_are_counted_on_the_device_for_edt_rows_only():
    config = SimpleNamespace(additional_config={}, scheduler_config=SimpleNamespace(max_num_seqs=8),
                             model_config=SimpleNamespace(tokenizer=None, served_model_name="m"))
    proc = RealVllmLogitsProcessor(config, torch.device("cpu"), False)
    params = [SamplingParams(extra_args={"sampler": "edt", "edt_t0": 0.6}), SamplingParams(),
              SamplingParams(extra_args={"sampler": "edt", "edt_t0": 1.8, "edt_theta": 0.0})]
    proc.update_state(BatchUpdate(3, removed=[], added=[(i, p, [], []) for i, p in enumerate(params)], moved=[]))
    assert proc.metrics.requests == {"edt": 2, "none": 1}
    want = []
    for _ in range(3):
        x = torch.randn(3, 301) * 3
        proc.apply(x.clone())
        want += [reference.apply_edt(x[0:1], 0.6, 0.8, 1.0, MIN_SCALE)[1].item(), 1.8]
    counts, total = proc.metrics.temperature.snapshot()
    bounds = observability.TEMPERATURE_BUCKETS
    expected = [0] * (len(bounds) + 1)
    for t in want:
        expected[next((i for i, b in enumerate(bounds) if t <= b), len(bounds))] += 1
    assert counts == expected  # the plain row (T = 1 identity) is not counted
    assert total == pytest.approx(sum(want), rel=1e-5)
    assert proc.metrics.seconds["edt_real"].counts and sum(proc.metrics.seconds["edt_real"].counts) == 3


@pytest.fixture
def runner_methods(monkeypatch):
    """vLLM's V1 runner and real_vllm's processor class, their methods restored afterwards."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from real_vllm.integration.slot_processor import SlotLogitsProcessor

    for cls, parts in ((GPUModelRunner, step_timing.RUNNER_PARTS), (SlotLogitsProcessor, step_timing.PROCESSOR_PARTS)):
        for name in parts:
            monkeypatch.setattr(cls, name, getattr(cls, name))
    return GPUModelRunner, SlotLogitsProcessor


def test_step_timing_is_off_unless_asked_for(runner_methods, monkeypatch):
    runner, processor = runner_methods
    before = {name: getattr(runner, name) for name in step_timing.RUNNER_PARTS}
    for value in (None, "", "0"):
        if value is None:
            monkeypatch.delenv(step_timing.ENV, raising=False)
        else:
            monkeypatch.setenv(step_timing.ENV, value)
        assert step_timing.install() is False
        assert {name: getattr(runner, name) for name in step_timing.RUNNER_PARTS} == before
        assert not getattr(processor.apply, "_real_vllm_step_timed", False)


def test_step_timing_times_vllms_forward_and_sampler_and_the_processors(runner_methods, monkeypatch):
    runner, _ = runner_methods
    monkeypatch.setenv(step_timing.ENV, "1")
    assert step_timing.install() and step_timing.install()  # twice: still one timer per method
    config = SimpleNamespace(additional_config={}, scheduler_config=SimpleNamespace(max_num_seqs=8),
                             model_config=SimpleNamespace(tokenizer=None, served_model_name="m"))
    proc = RealVllmLogitsProcessor(config, torch.device("cpu"), False)
    proc.update_state(BatchUpdate(2, removed=[], added=[(0, SamplingParams(), [], []),
                                                        (1, SamplingParams(extra_args={"sampler": "edt"}), [], [])],
                                  moved=[]))
    logits = torch.randn(2, 301)

    def model(**inputs):
        time.sleep(0.02)
        return inputs["input_ids"]

    def sampler(logits, sampling_metadata):
        time.sleep(0.01)
        return proc.apply(logits)

    # a stand-in for the runner, with what _model_forward and _sample read of it
    stub = SimpleNamespace(vllm_config=config, device=torch.device("cpu"), model=model, sampler=sampler,
                           input_batch=SimpleNamespace(sampling_metadata=None, update_async_output_token_ids=lambda: None))
    ids = torch.arange(3)
    assert runner._model_forward(stub, input_ids=ids, positions=ids) is ids
    assert runner._sample(stub, logits.clone(), None).shape == logits.shape
    seconds = observability.recorder(config, torch.device("cpu")).seconds
    assert seconds is proc.metrics.seconds
    counts = {part: sum(h.counts) for part, h in seconds.items()}
    assert counts == {"processors_update": 1, "vllm_model_forward": 1, "vllm_sample": 1, "processors_apply": 1,
                      "edt_real": 1, "edt": 1}
    assert 0.02 <= seconds["vllm_model_forward"].sum < 1.0
    assert seconds["edt_real"].sum <= seconds["processors_apply"].sum < seconds["vllm_sample"].sum - 0.01 + 1e-3
    for name in step_timing.RUNNER_PARTS:  # execute_model and sample_tokens: timed in the served test below
        assert getattr(getattr(runner, name), "_real_vllm_step_timed", False), name
    # a plain batch: the processors return at once, and that is still timed
    proc.update_state(BatchUpdate(2, removed=[1], added=[], moved=[]))
    proc.apply(logits.clone())
    assert sum(seconds["processors_apply"].counts) == 2 and sum(seconds["edt_real"].counts) == 1


# ----------------------------------------------------------------------------- a live server



def scrape(server) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("real_vllm:")}


def pick(metrics, name, **labels):
    return [v for (n, ls), v in metrics.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items())]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    from real_vllm.server import LocalServer
    from tests.thf_fixtures import build_tiny_thf

    thf = build_tiny_thf(tmp_path_factory.mktemp("thf") / "tiny-thf", tiny_model_dir)
    # A metrics folder inherited from a process that loaded the plugin before (as pytest's own,
    # once an in-process engine ran): the server must still read a folder of its own.
    stale = tempfile.mkdtemp(prefix="stale_metrics_")
    # With vLLM's runner step timed (step_timing): its parts are checked next to real_vllm's.
    with LocalServer(tiny_model_dir, ["--sampler", "edt", "--real-thf", str(thf), "--max-num-seqs", "8"],
                     env={"REAL_VLLM_METRICS_DIR": stale, step_timing.ENV: "1"}) as s:
        yield s, thf


@pytest.mark.engine
def test_startup_summary_is_logged_in_vllms_format(served):
    server, thf = served
    log = server.log_path.read_text(errors="replace")
    # vLLM's format: "(EngineCore pid=N) INFO mm-dd hh:mm:ss [observability.py:L] ..."
    line = r"\([\w_ ]+ pid=\d+\) INFO \d\d-\d\d [\d:]+ \[observability\.py:\d+\] "
    assert re.search(line + r"real_vllm 0\.1\.0: samplers served: none, edt, real, edt\+real; "
                     r"server default: edt\n", log), log[-3000:]
    assert re.search(line + r"real_vllm: REAL's THF: " + re.escape(str(thf)) + r" \(given\), its tokenizer in ", log)
    assert re.search(line + r"real_vllm: early layers not tapped", log)
    assert len(re.findall(r"samplers served", log)) == 1, "one summary per engine"


@pytest.mark.engine
def test_metrics_count_requests_by_sampler_and_the_values_of_t_and_p_t(served):
    server, _ = served
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    tokens = {"edt": 0, "real": 0, "none": 0}
    for i, xargs in enumerate([{}, {"edt_t0": 0.5}, {"sampler": "edt", "edt_t0": 0.5},
                               {"sampler": "real", "real_p0": 0.9}, {"sampler": "real"}, {"sampler": "none"}]):
        reply = client.completions.create(model=model, prompt="The function", max_tokens=12, seed=i,
                                          extra_body={"vllm_xargs": xargs})
        tokens[xargs.get("sampler", "edt")] += reply.usage.completion_tokens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the worker writes its files every FLUSH_SECONDS
        metrics = scrape(server)
        if pick(metrics, "real_vllm:real_top_p_count") == [tokens["real"]]:
            break
        time.sleep(0.5)
    # A flush can fall inside the last step (after p_t, before the runner's sample_tokens timer):
    # the engine is idle now, so the next flush has every value.
    time.sleep(3 * observability.FLUSH_SECONDS)
    metrics = scrape(server)
    labels = {"model_name": model, "engine": "0"}
    for sampler, n in (("edt", 3), ("real", 2), ("none", 1)):
        assert pick(metrics, "real_vllm:requests_total", sampler=sampler, **labels) == [n], metrics
    # one T per EDT row and step (every sampled token), all at most t0 = 1, two requests at 0.5
    assert pick(metrics, "real_vllm:edt_temperature_count", **labels) == [tokens["edt"]]
    assert pick(metrics, "real_vllm:edt_temperature_bucket", le="1.0", **labels) == [tokens["edt"]]
    assert 0 < pick(metrics, "real_vllm:edt_temperature_sum")[0] <= tokens["edt"]
    assert pick(metrics, "real_vllm:edt_temperature_bucket", le="0.5")[0] >= 2 / 3 * tokens["edt"] - 1e-9
    # one p_t per REAL row and step, in (0, 1]
    assert pick(metrics, "real_vllm:real_top_p_count", **labels) == [tokens["real"]]
    assert pick(metrics, "real_vllm:real_top_p_bucket", le="1.0", **labels) == [tokens["real"]]
    assert 0 < pick(metrics, "real_vllm:real_top_p_sum")[0] <= tokens["real"]
    # time per step, by part
    steps = pick(metrics, "real_vllm:step_seconds_count", part="edt_real", **labels)
    assert steps and steps[0] >= max(tokens["edt"], tokens["real"]) / 8
    thf = pick(metrics, "real_vllm:step_seconds_count", part="thf", **labels)
    assert thf and 0 < thf[0] <= tokens["real"]
    assert 0 < pick(metrics, "real_vllm:step_seconds_sum", part="thf")[0] < pick(
        metrics, "real_vllm:step_seconds_sum", part="edt_real")[0]
    assert not pick(metrics, "real_vllm:step_seconds_count", part="sled")
    # vLLM's runner step (REAL_VLLM_STEP_TIMING=1): one sample per step, the forward inside
    # execute_model, the processors inside the sampler
    def part(name, stat="sum"):
        found = pick(metrics, f"real_vllm:step_seconds_{stat}", part=name, **labels)
        assert len(found) == 1, (name, metrics)
        return found[0]

    samples = part("vllm_sample", "count")
    assert samples == part("vllm_sample_tokens", "count") and samples >= steps[0]
    assert part("vllm_execute_model", "count") >= part("vllm_model_forward", "count") >= samples
    assert 0 < part("vllm_model_forward") < part("vllm_execute_model")
    assert 0 < part("vllm_sample") < part("vllm_sample_tokens")
    assert part("processors_apply", "count") >= samples  # every apply, the plain steps' too
    assert part("edt_real") <= part("processors_apply") < part("vllm_sample")
    assert part("processors_update", "count") >= 1
    # vLLM's own metrics are still served next to them
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as r:
        assert "vllm:num_requests_running" in r.read().decode()
