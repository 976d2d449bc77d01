"""The vLLM general plugin: adds ``--sampler`` to ``vllm serve`` (and every EngineArgs CLI).

vLLM loads ``vllm.general_plugins`` entry points in the API server before it builds the
serve argument parser (AsyncEngineArgs.add_cli_args calls load_general_plugins first), in
the engine core and in the workers. ``--sampler NAME`` and ``--real-thf PATH``
are folded into ``additional_config`` ("sampler", "real_thf"), where the logits processor
reads the server defaults.
EngineArgs.add_cli_args / from_cli_args are not a public API: the patch is guarded by the
vLLM version it was verified on, and tested. So is the opt-in timing of vLLM's runner step
(step_timing, ``REAL_VLLM_STEP_TIMING=1``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os

logger = logging.getLogger("real_vllm")

VERIFIED_VLLM = ("0.32.",)
_PATCHED = "_real_vllm_patched"
# vLLM's --help=NAME lower-cases NAME and turns '_' into '-' before comparing it with group
# titles, so this title answers --help=real-vllm and --help=real_vllm.
HELP_GROUP = "real-vllm"
HELP_DESCRIPTION = ("Factuality/diversity-aware decoding (the real_vllm plugin): every flag it adds; "
                    "`--help=real-vllm` lists them. Per request: vllm_xargs (see the README).")


def register() -> None:
    """Entry point of ``vllm.general_plugins``; safe to call many times."""
    import vllm

    from real_vllm.integration import observability

    observability.route_logging()
    observability.setup_metrics_dir()
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
    from real_vllm.integration.early_models import register_all

    register_all()
    _add_sampler_flag(EngineArgs)
    _hook_engine_config(EngineArgs)
    from real_vllm.integration import step_timing

    step_timing.install()  # only with REAL_VLLM_STEP_TIMING set


def _add_sampler_flag(engine_args_cls) -> None:
    from real_vllm.methods import SAMPLERS

    original_add = engine_args_cls.add_cli_args
    original_from = engine_args_cls.from_cli_args.__func__

    @functools.wraps(original_add)
    def add_cli_args(parser, *args, **kwargs):
        parser = original_add(parser, *args, **kwargs)
        group = parser.add_argument_group(HELP_GROUP, HELP_DESCRIPTION)
        group.add_argument(
            "--sampler",
            choices=list(SAMPLERS),
            default=argparse.SUPPRESS,  # absent unless given; no '(default: None)' in --help
            help="Server-wide default sampler; a request can override it with "
            'vllm_xargs {"sampler": ...}; "none" is plain vLLM sampling. Every flag of '
            "the plugin: --help=real-vllm.",
        )
        group.add_argument(
            "--real-thf",
            default=argparse.SUPPRESS,
            metavar="PATH|NAME",
            help="THF checkpoint for REAL sampling: a folder, or a shipped one's name "
            "(smollm2, the default for the embedded model; smollm2-depth).",
        )
        group.add_argument(
            "--real-retokenize",
            action="store_true",
            default=argparse.SUPPRESS,
            help="Serve REAL with a THF trained for another tokenizer: decode the served tokens "
            "and re-tokenise the text with the THF's tokenizer (slower per step).",
        )
        group.add_argument(
            "--sled-layers",
            default=argparse.SUPPRESS,
            metavar="LAYERS",
            help="Early layers SLED reads: all (default), every:K, or a list like 0,8,16 "
            "(0 = embeddings).",
        )
        group.add_argument(
            "--dola-layers",
            default=argparse.SUPPRESS,
            metavar="LAYERS",
            help="DoLa's candidate premature layers: high (default), low, or a list.",
        )
        for method, default in (("sled", "off"), ("dola", "off")):
            group.add_argument(
                f"--{method}-early-norm",
                choices=("on", "off"),
                default=argparse.SUPPRESS,
                help=f"Apply the final norm to the early layers {method.upper() if method == 'sled' else 'DoLa'} "
                f"reads, before lm_head (default: {default}).",
            )
        return parser

    @functools.wraps(original_from)
    def from_cli_args(cls, args):
        engine_args = original_from(cls, args)
        from real_vllm.integration import observability

        observability.setup_metrics_dir(front_end=True)  # this process serves /metrics
        config = dict(engine_args.additional_config or {})
        for flag, key in (
            ("--sampler", "sampler"),
            ("--real-thf", "real_thf"),
            ("--real-retokenize", "real_retokenize"),
            ("--sled-layers", "sled_layers"),
            ("--dola-layers", "dola_layers"),
            ("--sled-early-norm", "sled_early_norm"),
            ("--dola-early-norm", "dola_early_norm"),
        ):
            value = getattr(args, key, None)
            if value is None:
                continue
            if key == "real_thf" and os.path.exists(value):
                # A folder, for engine processes that may not share the caller's cwd; anything
                # else stays as given (a shipped checkpoint's name, or an error in startup.py).
                value = os.path.abspath(value)
            if config.get(key, value) != value:
                from real_vllm.integration.startup import StartupError

                raise StartupError(
                    f"real_vllm: {flag} {value} conflicts with --additional-config "
                    f"{key}={config[key]!r}; give one of them"
                )
            config[key] = value
        engine_args.additional_config = config
        return engine_args

    engine_args_cls.add_cli_args = staticmethod(add_cli_args)
    engine_args_cls.from_cli_args = classmethod(from_cli_args)
    setattr(engine_args_cls, _PATCHED, True)


def _hook_engine_config(engine_args_cls) -> None:
    """Before vLLM builds the engine config: when the server's sampler needs early layers,
    switch the model to its early-layer wrapper (an hf_overrides callable) and refuse the
    combinations that cannot work; after: record, for validate_params in this process,
    whether SLED/DoLa requests can be served."""
    from real_vllm.integration import early_models
    from real_vllm.integration.frontend import SERVED
    from real_vllm.methods import uses_early_layers
    from real_vllm.methods.early_layers import EarlyLayerSettings

    original = engine_args_cls.create_engine_config

    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):
        from real_vllm.integration import startup

        try:
            config = _create_engine_config(self, *args, **kwargs)
        except ValueError as e:  # ours become StartupError: `real-vllm serve` prints them last, exit 2
            ours = _our_error(e)
            if ours is not None and not isinstance(e, startup.StartupError):
                raise startup.StartupError(ours) from None
            raise
        startup.check_server(config)
        startup.refuse_beam_search_with_a_sampler()
        return config

    def _create_engine_config(self, *args, **kwargs):
        extra = self.additional_config or {}
        sampler = extra.get("sampler", "none")
        needs_early = isinstance(sampler, str) and uses_early_layers(sampler)
        if self.speculative_config and needs_early:
            raise ValueError(
                f"real_vllm: --sampler {sampler} cannot run with speculative decoding (the "
                "early-layer model wrapper is not supported with a speculator); drop one of them"
            )
        if self.speculative_config and extra.get("real_retokenize") is True:
            raise ValueError(
                "real_vllm: --real-retokenize cannot run with speculative decoding (REAL's "
                "re-tokenised text history cannot take draft tokens); drop one of them"
            )
        if needs_early:
            try:
                settings = EarlyLayerSettings.from_config(extra)
            except ValueError as e:
                raise ValueError(f"real_vllm: {e}") from None
            if (self.pipeline_parallel_size or 1) > 1:
                raise ValueError(
                    f"real_vllm: --sampler {sampler} needs every early layer on the last pipeline "
                    "stage; pipeline parallelism is not supported with it (use tensor parallelism)"
                )
            if getattr(self, "enable_batch_sharded_sampling", False):
                # Model Runner V2 would then call compute_logits_local, which has no early rows.
                raise ValueError(
                    f"real_vllm: --sampler {sampler} does not support batch-sharded sampling "
                    "(--enable-batch-sharded-sampling); leave it off"
                )
            if not isinstance(self.hf_overrides, early_models.EarlyLayerOverrides):
                self.hf_overrides = early_models.EarlyLayerOverrides(settings, self.hf_overrides)
        config = original(self, *args, **kwargs)
        # vLLM's V1 runner loads no entry-point logits processor under speculative decoding
        # (build_logitsprocs), so nothing of real_vllm would run; Model Runner V2 runs them on
        # every draft row, which EDT and REAL handle.
        SERVED["no_processors"] = bool(config.speculative_config) and not config.use_v2_model_runner
        if SERVED["no_processors"] and sampler != "none":
            raise ValueError(
                f"real_vllm: --sampler {sampler} cannot run with speculative decoding on vLLM's "
                "V1 model runner (it applies no plugin logits processors then); use Model Runner "
                "V2 (the default on CUDA; VLLM_USE_V2_MODEL_RUNNER=1) or drop one of them"
            )
        if needs_early:
            early_models.check_wrapped(config.model_config.hf_config)
        SERVED["early_layers"] = needs_early
        return config

    def _our_error(e: ValueError) -> str | None:
        """The message of a real_vllm error, also when vLLM's config validation wrapped it
        (pydantic's ValidationError, itself a ValueError, around our overrides' error)."""
        if str(e).startswith("real_vllm:"):
            return str(e)
        for error in getattr(e, "errors", lambda: [])():
            inner = (error.get("ctx") or {}).get("error")
            if isinstance(inner, early_models.LayerChoiceError):
                return str(inner)
        return None

    engine_args_cls.create_engine_config = create_engine_config
