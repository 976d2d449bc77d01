"""What `real-vllm serve` and the API server's front end do before and around the engine: the
CPU KV cache size, --help, start-up refusals (exit 2, our line last), near-miss keys, vLLM
sampling parameters that would stack with EDT/REAL, and beam search. No engine starts here."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from vllm import SamplingParams

import real_vllm.integration.plugin as plugin
from real_vllm import cli
from real_vllm.integration import frontend, processor, startup
from real_vllm.methods import check_vllm_params, near_miss, parse_sampler_args

plugin.register()
GiB = 1 << 30


# ----------------------------------------------------------------------- item 1: KV cache


@pytest.mark.parametrize(
    "available_gib, expected",
    [(19.7, 4), (16.0, 4), (15.9, 3), (8.0, 2), (5.0, 1), (2.0, 1), (0.5, 1)],
)
def test_cpu_kv_cache_is_a_quarter_of_what_is_free_whole_gib_1_to_4(available_gib, expected):
    assert cli.cpu_kv_cache_gib([], {}, int(available_gib * GiB)) == expected


@pytest.mark.parametrize(
    "argv, environ",
    [
        ([], {"VLLM_CPU_KVCACHE_SPACE": "2"}),
        (["--gpu-memory-utilization", "0.3"], {}),
        (["--gpu_memory_utilization=0.3"], {}),
        (["--kv-cache-memory-bytes", "1000000000"], {}),
        (["--kv_cache_memory_bytes=1G"], {}),
    ],
)
def test_cpu_kv_cache_is_left_to_the_user_who_sized_it(argv, environ):
    assert cli.cpu_kv_cache_gib(["MODEL", *argv], environ, 20 * GiB) is None


def test_cpu_kv_cache_reads_a_config_file(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("gpu_memory_utilization: 0.4\nmax_model_len: 512\n")
    assert cli.cpu_kv_cache_gib(["MODEL", "--config", str(config)], {}, 20 * GiB) is None
    other = tmp_path / "other.yaml"
    other.write_text("max_model_len: 512\n")
    assert cli.cpu_kv_cache_gib(["MODEL", f"--config={other}"], {}, 20 * GiB) == 4
    # an empty variable is unset for vllm-cpu too
    assert cli.cpu_kv_cache_gib(["MODEL"], {"VLLM_CPU_KVCACHE_SPACE": ""}, 20 * GiB) == 4


# ----------------------------------------------------------------------- item 4: near misses


@pytest.mark.parametrize(
    "key, meant",
    [("samplr", "sampler"), ("Sampler", "sampler"), ("sampler ", "sampler"), ("smapler", "sampler"),
     ("samplers", "sampler"), ("edt-t0", "edt_t0"), ("edtt0", "edt_t0"), ("edtn", "edt_n"),
     ("real-p0", "real_p0"), ("real_decay_temprature", "real_decay_temperature"),
     ("dolarelative_top", "dola_relative_top"), ("sledk", "sled_k")],
)
def test_a_near_miss_of_our_keys_is_refused_naming_the_key_meant(key, meant):
    assert near_miss(key) == meant
    with pytest.raises(ValueError, match=f"did you mean '{meant}'"):
        parse_sampler_args({key: "none"})


@pytest.mark.parametrize("key", ["kv_transfer_params", "ec_transfer_params", "temperature", "seed", "top_k",
                                 "eta_n", "simple", "sampl", "my_plugin_alpha", "samp"])
def test_keys_far_from_ours_belong_to_other_plugins(key):
    assert near_miss(key) is None
    assert parse_sampler_args({key: 1}).sampler == "none"


# ----------------------------------------------------------------------- item 3: vLLM params


def req(sampler):
    return parse_sampler_args({"sampler": sampler})


@pytest.mark.parametrize(
    "sampler, params, refused",
    [
        ("edt", dict(temperature=0.7), "temperature"),
        ("edt", dict(temperature=0.0), None),  # greedy stays greedy
        ("edt", dict(temperature=1.0, top_p=0.9), None),  # top_p after EDT on both runners
        ("edt", dict(temperature=1.0, min_p=0.1), "min_p"),
        ("real", dict(temperature=1.0, top_p=0.9), "top_p"),
        ("real", dict(temperature=0.5), "edt\\+real with edt_theta 0"),
        ("real", dict(temperature=1.0, min_p=0.05), "min_p"),
        ("sled+real", dict(temperature=1.0, top_p=0.95), "top_p"),
        ("sled+real", dict(temperature=0.6), "sled\\+edt\\+real"),
        ("edt+real", dict(temperature=1.0, top_p=0.8), "top_p"),
        ("real", dict(temperature=0.0, top_p=1.0), None),
        ("sled", dict(temperature=0.6, top_p=0.9, min_p=0.1), None),  # SLED runs first on both runners
        ("none", dict(temperature=0.6, top_p=0.9, min_p=0.1), None),
    ],
)
def test_vllm_params_that_would_stack_with_edt_or_real(sampler, params, refused):
    sp = SamplingParams(**params)
    if refused is None:
        check_vllm_params(req(sampler), sp.temperature, sp.top_p, sp.min_p)
    else:
        with pytest.raises(ValueError, match=refused):
            check_vllm_params(req(sampler), sp.temperature, sp.top_p, sp.min_p)


def test_validate_params_applies_the_rules_to_the_server_default(monkeypatch):
    monkeypatch.setitem(frontend.SERVED, "defaults", {"sampler": "edt"})
    validate = processor.RealVllmLogitsProcessor.validate_params
    with pytest.raises(ValueError, match=r"temperature 0.7 cannot be combined with sampler edt \(the server's default\)"):
        validate(SamplingParams(temperature=0.7))
    validate(SamplingParams(temperature=0.7, extra_args={"sampler": "none"}))  # opted out
    validate(SamplingParams(temperature=1.0))
    with pytest.raises(ValueError, match="did you mean 'sampler'"):
        validate(SamplingParams(extra_args={"samplr": "none"}))
    monkeypatch.setitem(frontend.SERVED, "defaults", {})
    validate(SamplingParams(temperature=0.7))


# ----------------------------------------------------------------------- item 5: beam search


def test_beam_search_is_refused_with_a_sampler(monkeypatch):
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.exceptions import VLLMValidationError

    startup.refuse_beam_search_with_a_sampler()
    body = dict(model="m", prompt="The", max_tokens=4, n=2, use_beam_search=True)
    monkeypatch.setitem(frontend.SERVED, "defaults", {})
    CompletionRequest(**body).to_beam_search_params(4, {})
    CompletionRequest(**body, vllm_xargs={"sampler": "none"}).to_beam_search_params(4, {})
    with pytest.raises(VLLMValidationError, match="use_beam_search cannot run sampler edt:") as e:
        CompletionRequest(**body, vllm_xargs={"sampler": "edt"}).to_beam_search_params(4, {})
    assert e.value.parameter == "use_beam_search"
    monkeypatch.setitem(frontend.SERVED, "defaults", {"sampler": "real"})
    with pytest.raises(VLLMValidationError, match=r"sampler real \(the server's default\)"):
        CompletionRequest(**body).to_beam_search_params(4, {})
    CompletionRequest(**body, vllm_xargs={"sampler": "none"}).to_beam_search_params(4, {})


# ----------------------------------------------------------------------- item 8: start-up


def build(model_dir, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model_dir), dtype="float32", **kwargs).create_engine_config()


def test_front_end_refuses_bad_server_settings_before_any_engine(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(frontend.SERVED, "defaults", {})
    with pytest.raises(startup.StartupError, match="cannot load the THF checkpoint"):
        build(tiny_model_dir, additional_config={"sampler": "real", "real_thf": str(tmp_path / "missing")})
    with pytest.raises(startup.StartupError, match=r"not the name of a shipped checkpoint \(shipped: .*smollm2-depth"):
        build(tiny_model_dir, additional_config={"real_thf": "no-such-thf"})
    with pytest.raises(startup.StartupError, match="did you mean 'sampler'"):
        build(tiny_model_dir, additional_config={"samplr": "edt"})
    with pytest.raises(startup.StartupError, match="edt_t0"):
        build(tiny_model_dir, additional_config={"sampler": "edt", "edt_t0": -1})
    with pytest.raises(startup.StartupError, match="real_retokenize must be true or false"):
        build(tiny_model_dir, additional_config={"real_retokenize": "yes"})
    # a REAL default with the shipped THF of another tokenizer than the tiny model's
    with pytest.raises(startup.StartupError, match="another tokenizer"):
        build(tiny_model_dir, additional_config={"sampler": "real"})
    with pytest.raises(startup.StartupError, match="pipeline"):  # the hook's own refusals, too
        build(tiny_model_dir, pipeline_parallel_size=2, additional_config={"sampler": "sled"})
    build(tiny_model_dir, additional_config={"sampler": "edt", "edt_t0": 0.7})
    assert frontend.SERVED["defaults"] == {"sampler": "edt", "edt_t0": 0.7}


def _cli(args, timeout=300):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "real_vllm.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_serve_with_a_bad_thf_fails_fast_with_our_line_last_exit_2(tiny_model_dir, tmp_path):
    start = time.monotonic()
    run = _cli(["serve", str(tiny_model_dir), "--sampler", "real", "--real-thf", str(tmp_path / "nope"),
                "--dtype", "float32", "--enforce-eager", "--port", "0"])
    elapsed = time.monotonic() - start
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("real-vllm serve: real_vllm: cannot load the THF checkpoint for REAL"), last
    assert str(tmp_path / "nope") in last
    assert "Traceback" not in run.stderr and "EngineCore" not in run.stdout + run.stderr
    assert elapsed < 120, elapsed


# ----------------------------------------------------------------------- item 9: help


def test_help_group_and_default_model(tmp_path):
    script = tmp_path / "help.py"
    script.write_text(textwrap.dedent("""
        from real_vllm import cli
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        for argv in (["serve", "--help=real_vllm"], ["serve", "--help=real-vllm"], ["serve", "--help"]):
            FlexibleArgumentParser._search_keyword = None
            print("=====", " ".join(argv), flush=True)
            try:
                cli.main(argv)
            except SystemExit as e:
                print("exit", e.code, flush=True)
    """))
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300).stdout
    underscore, dash, full = out.split("=====")[1:]
    flags = ["--sampler", "--real-thf", "--real-retokenize", "--sled-layers", "--dola-layers",
             "--sled-early-norm", "--dola-early-norm"]
    for section in (underscore, dash):
        assert "real-vllm:" in section and "exit 0" in section, section
        assert "No group or arguments matching" not in section
        for flag in flags:
            assert flag in section, (flag, section)
        assert "(default: None)" not in section
    assert "SmolLM2-135M-Instruct" in full and "Qwen/Qwen3-0.6B if no model" not in full
    assert "real-vllm" in full  # the group is listed among the config groups
