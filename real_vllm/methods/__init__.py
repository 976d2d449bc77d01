"""The samplers a request can choose, and the parsing of its parameters.

A request names a sampler (``"sampler": "edt"``) and method-prefixed parameters
(``"edt_t0": 0.7``) in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP). The
server-wide defaults (``--sampler``, ``--additional-config``) use the same names; a
request's own values win.

The methods are the modules of this package that define ``METHOD`` (a methods.base.Method):
adding one is one file here plus its op (README, "Adding a method"). A sampler runs at most
one method of each stage, in stage order: the early-layer methods replace the logits (before
vLLM's penalties and temperature), then a temperature, then a truncation on the scaled logits;
its name joins its methods with "+" (none, edt, real, edt+real, sled, sled+edt, ...).
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from real_vllm.methods import early_layers, real
from real_vllm.methods.base import Method, Stage
from real_vllm.methods.params import _show


def _discover() -> tuple[Method, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "METHOD", None), Method):
            found.append(module.METHOD)
    return tuple(sorted(found, key=lambda m: (m.stage, m.name)))


METHODS: tuple[Method, ...] = _discover()
BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
# sampler name -> the methods it runs, in order
SAMPLERS: dict[str, tuple[str, ...]] = {
    "+".join(names) or "none": names
    for names in (
        tuple(n for n in choice if n)
        for choice in itertools.product(*([None, *(m.name for m in METHODS if m.stage is stage)] for stage in Stage))
    )
}
# Listed by early-layer method (none first), then by how many other methods, then by stage.
SAMPLERS = dict(sorted(SAMPLERS.items(), key=lambda kv: (
    [n for n in kv[1] if BY_NAME[n].reads_early_layers], len(kv[1]), [BY_NAME[n].stage for n in kv[1]])))
EARLY_METHODS = tuple(m.name for m in METHODS if m.reads_early_layers)
METHOD_CONFIGS = {m.name: m.config for m in METHODS}
PARAM_PREFIXES = tuple(f"{m}_" for m in METHOD_CONFIGS)
KNOWN_PARAMS = ("sampler", *(k for c in METHOD_CONFIGS.values() for k in c.PARAMS))
# additional_config keys that configure the server (its flags), never a request.
SERVER_KEYS = early_layers.SERVER_KEYS + real.SERVER_KEYS


def uses_early_layers(sampler: str) -> bool:
    return any(m in EARLY_METHODS for m in SAMPLERS.get(sampler, ()))


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of
    two neighbours, one edit each."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def near_miss(key: str) -> str | None:
    """The key of ours that ``key`` (not one of ours) is a misspelling of, or None.

    The rule (README, "Parameters"): case, '-' and spaces are ignored, then a key within 2
    edits (an insertion, a deletion, a substitution or a swap of neighbours each) of one of
    ours is a near miss; within 1 edit for our names of up to 7 characters (sampler, edt_n,
    edt_t0, sled_k, real_p0), so that short keys of other plugins ("simple") pass. Keys
    farther away belong to others.
    """
    folded = key.lower().replace("-", "_").replace(" ", "_")
    best, best_distance = None, None
    for ours in KNOWN_PARAMS + SERVER_KEYS:
        limit = 1 if len(ours) <= 7 else 2
        distance = _edit_distance(folded, ours)
        if distance <= limit and (best_distance is None or distance < best_distance):
            best, best_distance = ours, distance
    return best


@dataclass(frozen=True)
class SamplerRequest:
    """What one request asked for, validated: its sampler and the config of each method the
    sampler runs (``request.edt`` is EDT's config, None when the sampler does not run EDT)."""

    sampler: str = "none"
    configs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        return SAMPLERS[self.sampler]

    def __getattr__(self, name: str):
        if name in BY_NAME:
            return self.configs.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def parse_sampler_args(
    args: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None
) -> SamplerRequest:
    """Validate a request's sampler arguments over the server defaults.

    Raises ValueError naming the offending parameter. Keys without one of our prefixes
    belong to other logits processors and are left alone, unless they are a near miss of
    one of ours (``near_miss``: ``samplr``, ``Sampler``, ``edt-t0``), which is refused
    naming the key meant; an unknown key with our prefix is almost surely a typo and is
    refused.
    """
    merged = {**(defaults or {}), **(args or {})}
    for key in merged:
        if key in SERVER_KEYS and args and key in args:
            raise ValueError(f"{key} is a server setting (--{key.replace('_', '-')}), not a request parameter")
        if isinstance(key, str) and key not in KNOWN_PARAMS + SERVER_KEYS and (meant := near_miss(key)):
            raise ValueError(
                f"unknown parameter {key!r}: did you mean {meant!r}? (real_vllm's keys must be "
                "exact, and another plugin's key must not be 1-2 edits from one of ours)"
            )
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
    return SamplerRequest(sampler, {m: c for m, c in configs.items() if m in SAMPLERS[sampler]})


# V1 runs the temperature and truncation stages after vLLM's temperature and min-p, Model
# Runner V2 before them; top_k, and top_p with a method that does not replace it, compose the
# same way on both runners (applied after the method).
_GREEDY = 1e-5  # vLLM's _SAMPLING_EPS: a lower temperature is greedy


def check_vllm_params(request: SamplerRequest, temperature: float, top_p: float, min_p: float,
                      from_server: bool = False) -> None:
    """Refuse vLLM sampling parameters that a temperature- or truncation-stage method would
    silently stack with: those it replaces (``Method.replaces``), and temperature and min_p,
    which vLLM applies on one side of such a method on one runner and on the other side on the
    other. Greedy requests (temperature 0) pass: no method changes the argmax, and vLLM resets
    top_p and min_p for them. Raises ValueError naming the parameter.
    """
    staged = [BY_NAME[m] for m in request.methods if BY_NAME[m].stage is not Stage.EARLY_LAYERS]
    if temperature < _GREEDY or not staged:
        return
    whose = f"sampler {request.sampler}" + (" (the server's default)" if from_server else "")
    opt_out = ('; or send vllm_xargs {"sampler": "none"} for plain vLLM sampling' if from_server else "")
    named = " and ".join(m.name.upper() for m in staged)
    order = (f"vLLM applies it before {named} on its V1 runner and after "
             f"{'them' if len(staged) > 1 else 'it'} on Model Runner V2")
    for param, value, neutral in (("temperature", temperature, 1.0), ("top_p", top_p, 1.0), ("min_p", min_p, 0.0)):
        if value == neutral:
            continue
        fix = next((m.replaces[param] for m in staged if param in m.replaces), None)
        if fix is None and param == "temperature":
            fix = _temperature_in_front(request, named) or order
        elif fix is None and param == "min_p":
            fix = order
        if fix is not None:
            raise ValueError(f"{param} {value:g} cannot be combined with {whose}: {fix}; "
                             f"leave {param} at {neutral:g}{' (or 0, greedy)' if param == 'temperature' else ''}"
                             f"{opt_out}")


def _temperature_in_front(request: SamplerRequest, named: str) -> str | None:
    """How to get a fixed temperature in front of a sampler's methods on both runners: the
    same sampler with a temperature-stage method that can act as one, if there is such a
    sampler."""
    for method in METHODS:
        if method.fixed_temperature is None:
            continue
        names = sorted({*request.methods, method.name}, key=lambda n: BY_NAME[n].stage)
        sampler = "+".join(names)
        if sampler in SAMPLERS:
            return f"for a temperature before {named} use sampler {sampler} {method.fixed_temperature}"
    return None
