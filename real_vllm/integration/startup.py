"""What the front end (the API server process, or LLM() offline) checks before vLLM starts
an engine, and the request paths that never reach a logits processor.

Start-up: the plugin's create_engine_config hook calls ``check_server`` on the built
VllmConfig: the server-wide sampler settings, near-miss keys in ``--additional-config``, and
the THF a REAL server needs (loaded once on the CPU and dropped, with the worker's own rules),
so a bad ``--real-thf`` is refused here, in one line, instead of inside an engine-core
traceback. Every refusal is a ``StartupError``; ``real-vllm serve`` prints it last and exits 2.

Beam search: vLLM 0.32 builds each beam step's SamplingParams itself, without the request's
``vllm_xargs`` (entrypoints/generate/beam_search), so no sampler could run on it and
validate_params never sees the request's choice: ``refuse_beam_search_with_a_sampler``
answers such a request with HTTP 400 instead.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import VllmConfig

_PATCHED = "_real_vllm_beam_search_checked"


class StartupError(ValueError):
    """A server setting of real_vllm that cannot work; the message says what to do."""


def check_server(vllm_config: VllmConfig) -> dict[str, Any]:
    """Validate real_vllm's server settings in the front end; return the server defaults
    (also recorded for validate_params in this process). Raises StartupError."""
    from real_vllm.integration.frontend import SERVED, server_defaults
    from real_vllm.methods import KNOWN_PARAMS, SAMPLERS, SERVER_KEYS, near_miss

    extra = dict(getattr(vllm_config, "additional_config", None) or {})
    for key in extra:
        if isinstance(key, str) and key not in KNOWN_PARAMS + SERVER_KEYS and (meant := near_miss(key)):
            raise StartupError(f"real_vllm: unknown --additional-config key {key!r}: did you mean {meant!r}?")
    try:
        defaults = server_defaults(vllm_config)
    except ValueError as e:
        raise StartupError(str(e)) from None
    retokenize = extra.get("real_retokenize", False)
    if not isinstance(retokenize, bool):
        raise StartupError(f"real_vllm: real_retokenize must be true or false, got {retokenize!r}")
    _check_thf(vllm_config, extra, "real" in SAMPLERS[defaults.get("sampler", "none")], retokenize)
    SERVED["defaults"] = defaults
    return defaults


def _check_thf(vllm_config: VllmConfig, extra: dict, real_default: bool, retokenize: bool) -> None:
    """The worker's THF rules (RealVllmLogitsProcessor._load_thf), where a failure is fatal
    there: a THF the user named must load and fit the served tokenizer (or --real-retokenize),
    and a REAL default needs one. The shipped THF that merely does not fit is left to the worker
    (REAL is then unavailable, not an error)."""
    import torch

    from real_vllm.thf.runtime import THFRuntime, resolve_checkpoint

    try:
        path, chosen = resolve_checkpoint(extra.get("real_thf"))
    except ValueError as e:
        raise StartupError(str(e)) from None
    if path is None:
        if real_default:
            raise StartupError(
                "real_vllm: --sampler real needs a THF checkpoint: pass --real-thf PATH "
                "(train one with `real-vllm thf train`, see the README)"
            )
        return
    if not (chosen or real_default):
        return
    try:
        THFRuntime.load(path, torch.device("cpu"), tokenizer=vllm_config.model_config.tokenizer,
                        retokenize=retokenize)
    except ValueError as e:
        raise StartupError(str(e)) from None


def beam_search_refusal(vllm_xargs: dict | None, defaults: dict | None) -> str | None:
    """Why a beam-search request cannot be served as asked, or None. The sampler is the
    request's (vllm_xargs) over the server's default."""
    from real_vllm.methods import parse_sampler_args

    request = parse_sampler_args(vllm_xargs, defaults)  # a bad key is a 400 of its own
    if request.sampler == "none":
        return None
    whose = "" if "sampler" in (vllm_xargs or {}) else " (the server's default)"
    return (f"use_beam_search cannot run sampler {request.sampler}{whose}: vLLM's beam search "
            "scores the model's own log-probabilities and passes no vllm_xargs to its steps, so "
            'the sampler would be skipped; drop use_beam_search, or send vllm_xargs {"sampler": '
            '"none"} for plain beam search')


def refuse_beam_search_with_a_sampler() -> None:
    """Wrap the OpenAI requests' to_beam_search_params (chat and completions): a beam-search
    request whose sampler is not "none" gets HTTP 400 naming use_beam_search. Idempotent."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.exceptions import VLLMValidationError

    from real_vllm.integration.frontend import SERVED

    for cls in (ChatCompletionRequest, CompletionRequest):
        if getattr(cls, _PATCHED, False):
            continue
        original = cls.to_beam_search_params

        @functools.wraps(original)
        def to_beam_search_params(self, *args, _original=original, **kwargs):
            if reason := beam_search_refusal(self.vllm_xargs, SERVED.get("defaults")):
                raise VLLMValidationError(reason, parameter="use_beam_search")
            return _original(self, *args, **kwargs)

        cls.to_beam_search_params = to_beam_search_params
        setattr(cls, _PATCHED, True)
