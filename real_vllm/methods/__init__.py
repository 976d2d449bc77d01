"""The samplers a request can choose, and the parsing of its parameters.

A request names a sampler (``"sampler": "edt"``) and method-prefixed parameters
(``"edt_t0": 0.7``) in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP). The
server-wide defaults (``--sampler``, ``--additional-config``) use the same names; a
request's own values win.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from real_vllm.methods import early_layers, real
from real_vllm.methods.dola import DoLaConfig
from real_vllm.methods.edt import EDTConfig
from real_vllm.methods.params import _show
from real_vllm.methods.real import REALConfig
from real_vllm.methods.sled import SLEDConfig

# The early-layer methods replace the logits (they run first, before vLLM's penalties and
# temperature); then EDT's temperature; then REAL's nucleus on the scaled logits.
EARLY_METHODS = ("sled", "dola")
LATE_CHOICES = ((), ("edt",), ("real",), ("edt", "real"))
# sampler name -> the methods it runs, in order: none, edt, real, edt+real, sled, sled+edt, ...
SAMPLERS: dict[str, tuple[str, ...]] = {
    "+".join(methods) or "none": methods
    for methods in (early + late for early in ((), *((m,) for m in EARLY_METHODS)) for late in LATE_CHOICES)
}
METHOD_CONFIGS = {"edt": EDTConfig, "real": REALConfig, "sled": SLEDConfig, "dola": DoLaConfig}
PARAM_PREFIXES = tuple(f"{m}_" for m in METHOD_CONFIGS)
KNOWN_PARAMS = ("sampler", *(k for c in METHOD_CONFIGS.values() for k in c.PARAMS))
# additional_config keys that configure the server (its flags), never a request.
SERVER_KEYS = early_layers.SERVER_KEYS + real.SERVER_KEYS


def uses_early_layers(sampler: str) -> bool:
    return any(m in EARLY_METHODS for m in SAMPLERS.get(sampler, ()))


@dataclass(frozen=True)
class SamplerRequest:
    """What one request asked for, validated."""

    sampler: str = "none"
    edt: EDTConfig | None = None
    real: REALConfig | None = None
    sled: SLEDConfig | None = None
    dola: DoLaConfig | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return SAMPLERS[self.sampler]


def parse_sampler_args(
    args: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None
) -> SamplerRequest:
    """Validate a request's sampler arguments over the server defaults.

    Raises ValueError naming the offending parameter. Keys without one of our prefixes
    belong to other logits processors and are left alone; an unknown key with our
    prefix is almost surely a typo and is refused.
    """
    merged = {**(defaults or {}), **(args or {})}
    for key in merged:
        if key in SERVER_KEYS and args and key in args:
            raise ValueError(f"{key} is a server setting (--{key.replace('_', '-')}), not a request parameter")
        if isinstance(key, str) and key.startswith(PARAM_PREFIXES) and key not in KNOWN_PARAMS + SERVER_KEYS:
            raise ValueError(f"unknown parameter {key!r}; known: {', '.join(KNOWN_PARAMS)}")
    sampler = merged.get("sampler", "none")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {_show(sampler)}")
    configs = {}
    for method, config_cls in METHOD_CONFIGS.items():
        given = {field: merged[key] for key, field in config_cls.PARAMS.items() if key in merged}
        if given or method in SAMPLERS[sampler]:
            configs[method] = config_cls(**given)
    # Parameters of a method the sampler does not run are still validated (a server
    # default may turn that method on), but only the sampler's own methods are kept.
    return SamplerRequest(sampler, **{m: c for m, c in configs.items() if m in SAMPLERS[sampler]})
