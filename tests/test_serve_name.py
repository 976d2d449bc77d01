"""`real-vllm serve` without MODEL serves the default model under its name
(`--served-model-name SmolLM2-135M-Instruct FOLDER`: the name in /v1/models, the folder still
accepted), unless the user named it; with MODEL (LocalServer, the tests) nothing is added.
No engine starts here: the argv handed to vLLM's CLI is checked, and parsed by vLLM's parser."""

import pytest

from real_vllm import cli
from real_vllm.assets import DEFAULT_MODEL_NAME

FOLDER = "/cache/models/SmolLM2-135M-Instruct"


@pytest.fixture
def vllm_argv(monkeypatch):
    """What cli.serve hands to vLLM's CLI, with the default model's folder at FOLDER."""
    import real_vllm.assets as assets

    seen = []
    monkeypatch.setattr(assets, "default_model_dir", lambda: FOLDER)
    monkeypatch.setattr(cli, "_size_cpu_kv_cache", lambda argv: None)
    monkeypatch.setattr(cli, "run_vllm_cli", lambda argv: seen.append(list(argv)))

    def serve(argv):
        cli.serve(argv)
        (argv,) = seen
        seen.clear()
        return argv

    return serve


def test_the_default_model_is_served_under_its_name(vllm_argv):
    assert vllm_argv(["--sampler", "edt"]) == [
        "serve", FOLDER, "--sampler", "edt", "--served-model-name", DEFAULT_MODEL_NAME, FOLDER]
    assert vllm_argv([]) == ["serve", FOLDER, "--served-model-name", DEFAULT_MODEL_NAME, FOLDER]


def test_vllm_reads_the_name_first_and_the_folder_as_an_alias(vllm_argv):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    import real_vllm.integration.plugin as plugin

    plugin.register()
    argv = vllm_argv(["--sampler", "edt", "--port", "8001"])
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[1:])
    assert args.model_tag == FOLDER and args.served_model_name == [DEFAULT_MODEL_NAME, FOLDER]


@pytest.mark.parametrize("given", [["--served-model-name", "mine"], ["--served_model_name=mine"],
                                   ["--served-model-name=mine", "alias"]])
def test_a_name_the_user_gave_is_kept(vllm_argv, given):
    assert vllm_argv(["--sampler", "edt", *given]) == ["serve", FOLDER, "--sampler", "edt", *given]


def test_a_name_in_a_config_file_is_kept(vllm_argv, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("served_model_name: mine\n")
    assert vllm_argv(["--config", str(config)]) == ["serve", FOLDER, "--config", str(config)]


def test_a_model_the_user_gave_gets_no_name(vllm_argv):
    # LocalServer and the tests pass the folder: /v1/models keeps answering the folder.
    assert vllm_argv(["/some/model", "--sampler", "edt"]) == ["serve", "/some/model", "--sampler", "edt"]
    assert vllm_argv(["--model", "/some/model"]) == ["serve", "--model", "/some/model"]
