"""What the process that validates requests knows of the server it fronts.

vLLM validates request parameters (``LogitsProcessor.validate_params``) in the process that
builds the engine config: the API server, or the script that makes an ``LLM``. The plugin's
config hook (plugin.py) and the front-end start-up check (startup.py) record the server's
settings here; the processors' ``validate_params`` read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from real_vllm.methods import PARAM_PREFIXES, SERVER_KEYS, parse_sampler_args, uses_early_layers

if TYPE_CHECKING:
    from vllm.config import VllmConfig

# no_processors: speculative decoding on the V1 runner, which loads no plugin logits processor;
# defaults: the server-wide sampler settings (server_defaults), which a request falls back on;
# early_layers: whether the model computes early layers (None until an engine config is built
# through the plugin's hook: then nothing is refused for it).
SERVED: dict[str, Any] = {"no_processors": False, "defaults": {}, "early_layers": None}


def server_defaults(vllm_config: VllmConfig) -> dict[str, Any]:
    """The sampler settings in ``additional_config``, validated (a bad one stops start-up)."""
    extra = dict(getattr(vllm_config, "additional_config", None) or {})
    defaults = {
        k: v
        for k, v in extra.items()
        if k == "sampler" or (k.startswith(PARAM_PREFIXES) and k not in SERVER_KEYS)
    }
    try:
        parse_sampler_args(defaults)
    except ValueError as e:
        raise ValueError(f"real_vllm: bad server-wide sampler setting: {e}") from None
    return defaults


def check_served(sampler: str) -> None:
    """Refuse a request whose sampler this server cannot run (a ValueError: HTTP 400)."""
    if SERVED["no_processors"] and sampler != "none":
        raise ValueError(f"real_vllm: sampler {sampler} is unavailable on this server: vLLM's "
                         "V1 model runner applies no plugin logits processor under speculative decoding")
    if uses_early_layers(sampler) and SERVED["early_layers"] is False:
        raise ValueError(
            f"sampler {sampler!r} needs early-layer hidden states, which this server does not "
            "compute: start it with --sampler sled or --sampler dola (plain requests are still "
            'served there with "sampler": "none")'
        )
