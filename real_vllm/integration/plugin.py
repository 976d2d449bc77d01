"""The vLLM general plugin: adds ``--sampler`` to ``vllm serve`` (and every EngineArgs CLI).

vLLM loads ``vllm.general_plugins`` entry points in the API server before it builds the
serve argument parser (AsyncEngineArgs.add_cli_args calls load_general_plugins first), in
the engine core and in the workers. ``--sampler NAME`` and ``--real-thf PATH``
are folded into ``additional_config`` ("sampler", "real_thf"), where the logits processor
reads the server defaults.
EngineArgs.add_cli_args / from_cli_args are not a public API: the patch is guarded by the
vLLM version it was verified on, and tested.
"""

from __future__ import annotations

import functools
import logging
import os

logger = logging.getLogger("real_vllm")

VERIFIED_VLLM = ("0.32.",)
_PATCHED = "_real_vllm_patched"


def register() -> None:
    """Entry point of ``vllm.general_plugins``; safe to call many times."""
    import vllm
    from vllm.engine.arg_utils import EngineArgs

    if getattr(EngineArgs, _PATCHED, False):
        return
    if not vllm.__version__.startswith(VERIFIED_VLLM):
        logger.warning(
            "real_vllm: vLLM %s is not a version the --sampler flag was verified on (%s); "
            "use --additional-config '{\"sampler\": ...}' instead.",
            vllm.__version__,
            ", ".join(VERIFIED_VLLM),
        )
        return
    _add_sampler_flag(EngineArgs)


def _add_sampler_flag(engine_args_cls) -> None:
    from real_vllm.methods import SAMPLERS

    original_add = engine_args_cls.add_cli_args
    original_from = engine_args_cls.from_cli_args.__func__

    @functools.wraps(original_add)
    def add_cli_args(parser, *args, **kwargs):
        parser = original_add(parser, *args, **kwargs)
        group = parser.add_argument_group(
            "real_vllm", "Factuality/diversity-aware decoding (the real_vllm plugin)."
        )
        group.add_argument(
            "--sampler",
            choices=list(SAMPLERS),
            default=None,
            help="Server-wide default sampler; a request can override it with "
            'vllm_xargs {"sampler": ...}; "none" is plain vLLM sampling.',
        )
        group.add_argument(
            "--real-thf",
            default=None,
            metavar="PATH",
            help="THF checkpoint for REAL sampling (default: the one shipped for the "
            "embedded default model, if it applies).",
        )
        return parser

    @functools.wraps(original_from)
    def from_cli_args(cls, args):
        engine_args = original_from(cls, args)
        config = dict(engine_args.additional_config or {})
        for flag, key in (("--sampler", "sampler"), ("--real-thf", "real_thf")):
            value = getattr(args, key, None)
            if value is None:
                continue
            if key == "real_thf":  # the engine's processes may not share the caller's cwd
                value = os.path.abspath(value)
            if config.get(key, value) != value:
                raise ValueError(
                    f"{flag} {value} conflicts with --additional-config "
                    f"{key}={config[key]!r}; give one of them"
                )
            config[key] = value
        engine_args.additional_config = config
        return engine_args

    engine_args_cls.add_cli_args = staticmethod(add_cli_args)
    engine_args_cls.from_cli_args = classmethod(from_cli_args)
    setattr(engine_args_cls, _PATCHED, True)
