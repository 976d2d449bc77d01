"""Which early layers SLED and DoLa read: server-wide settings (they decide what the model
computes), resolved against the model's depth.

Layer n is the residual stream after n decoder layers (0 = the embeddings), as in Hugging
Face's ``output_hidden_states``; the final layer N is the model's own (normed) output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from real_vllm.methods.dola import candidate_layers
from real_vllm.methods.params import _show

SERVER_KEYS = ("sled_layers", "dola_layers", "sled_early_norm", "dola_early_norm")


def _parse_layers(name: str, value: Any, named: tuple[str, ...]) -> str | tuple[int, ...]:
    """A layer choice: one of ``named``, ``every:K``, a list of ints or "0,4,8"."""
    if isinstance(value, str):
        text = value.strip()
        if text in named:
            return text
        if text.startswith("every:"):
            step = text.removeprefix("every:")
            if step.isdigit() and int(step) >= 1:
                return f"every:{int(step)}"
        else:
            parts = [p.strip() for p in text.split(",")]
            if all(p.isdigit() for p in parts):
                return tuple(int(p) for p in parts)
    elif isinstance(value, (list, tuple)) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return tuple(value)
    forms = ", ".join(f"'{n}'" for n in named)
    raise ValueError(f"{name} must be {forms}, 'every:K' or a list of layer indices like '0,4,8'; got {_show(value)}")


def _parse_switch(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
        return value.lower() in ("on", "true")
    raise ValueError(f"{name} must be on or off, got {_show(value)}")


@dataclass(frozen=True)
class EarlyLayerSettings:
    """sled_layers: 'all' (the paper's default: 0..N-1), 'every:K' or a list; dola_layers:
    'low', 'high' or a list. *_early_norm: apply the model's final norm to the early layers
    before lm_head. Off for both, as in their reference code (SLED's; voidism/DoLa and
    transformers' generate(dola_layers=...) for DoLa). Un-normed early logits are hundreds of
    nats wide (776 on SmolLM2): the authors' DoLa divergence (the default, unbounded) still
    ranks the layers, while the paper's JSD (dola_divergence "jsd") sits at ln 2 within float32
    rounding there, so that option is best paired with --dola-early-norm on."""

    sled_layers: Any = "all"
    dola_layers: Any = "high"
    sled_early_norm: Any = False
    dola_early_norm: Any = False

    def __post_init__(self):
        object.__setattr__(self, "sled_layers", _parse_layers("sled_layers", self.sled_layers, ("all",)))
        object.__setattr__(self, "dola_layers", _parse_layers("dola_layers", self.dola_layers, ("low", "high", "every:1")))
        for name in ("sled_early_norm", "dola_early_norm"):
            object.__setattr__(self, name, _parse_switch(name, getattr(self, name)))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> EarlyLayerSettings:
        return cls(**{k: v for k, v in (config or {}).items() if k in SERVER_KEYS})

    def resolve(self, num_layers: int, tied_embeddings: bool) -> tuple[list[int], list[int]]:
        """(SLED's layers, DoLa's candidate layers) for a model of ``num_layers`` layers."""
        sled = self._expand("sled_layers", self.sled_layers, num_layers)
        if self.dola_layers in ("low", "high"):
            dola = candidate_layers(num_layers, self.dola_layers, tied_embeddings)
        else:
            dola = self._expand("dola_layers", self.dola_layers, num_layers)
        if not dola:
            raise ValueError(f"dola_layers {self.dola_layers!r} selects no layer of a {num_layers}-layer model")
        return sled, dola

    @staticmethod
    def _expand(name: str, choice, num_layers: int) -> list[int]:
        if choice == "all":
            return list(range(num_layers))
        if isinstance(choice, str):  # every:K
            return list(range(0, num_layers, int(choice.removeprefix("every:"))))
        bad = [i for i in choice if i >= num_layers]
        if bad:
            raise ValueError(
                f"{name}: layers {bad} do not exist; early layers of this model are 0..{num_layers - 1} "
                f"(0 = embeddings, {num_layers} = the final layer itself)"
            )
        return sorted(set(choice))
