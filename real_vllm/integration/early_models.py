"""The early-layer wrapper models: early-layer hidden states at exactly the sampled rows, for
SLED and DoLa.

vLLM computes logits as ``model.compute_logits(hidden_states[logits_indices])``. A wrapper
model class (one per architecture, made here from vLLM's own class) returns the final hidden
state concatenated with the residual streams of the chosen early layers (vLLM's EAGLE-3
``aux_hidden_state_layers`` machinery collects them), so the runner's own row gather picks the
early states of the sampled rows; ``compute_logits`` splits them off, computes the ordinary
logits from the final part and leaves the early rows in the per-process tap (tap.py) that the
early-layer logits processor reads in the same step.

The wrapper is chosen by ``EarlyLayerOverrides`` (an ``hf_overrides`` callable the plugin
installs when the server's sampler needs early layers), so users never write --hf-overrides.
"""

from __future__ import annotations

import importlib

import torch

from real_vllm.integration.tap import TAP, EarlyRows
from real_vllm.methods.early_layers import EarlyLayerSettings

PREFIX = "RealVllmEarlyLayers"
# Architectures whose vLLM class collects aux hidden states (EagleModelMixin) and whose
# forward/compute_logits have the Llama shape. Another such architecture needs one line:
# register_architecture("GraniteForCausalLM", "vllm.model_executor.models.granite").
WRAPPABLE: dict[str, str] = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "MistralForCausalLM": "vllm.model_executor.models.mistral",
}
# hf_config attributes the wrapper reads
TAPPED = "real_vllm_tapped_layers"
SLED_LAYERS = "real_vllm_sled_layers"
DOLA_LAYERS = "real_vllm_dola_layers"
SLED_NORM = "real_vllm_sled_early_norm"
DOLA_NORM = "real_vllm_dola_early_norm"


def register_architecture(architecture: str, module: str) -> None:
    """Make ``architecture`` (a vLLM model class in ``module``) servable with SLED/DoLa."""
    WRAPPABLE[architecture] = module
    _register_with_vllm(architecture)


def wrapper_name(architecture: str) -> str:
    return PREFIX + architecture


def register_all() -> None:
    for architecture in WRAPPABLE:
        _register_with_vllm(architecture)


def _register_with_vllm(architecture: str) -> None:
    from vllm import ModelRegistry

    # Lazy "module:Class": the class is built on first import, in whichever process needs it.
    ModelRegistry.register_model(wrapper_name(architecture), f"{__name__}:{wrapper_name(architecture)}")


def __getattr__(name: str):
    """Module attribute RealVllmEarlyLayers<Arch>: the wrapper class, built once."""
    if name.startswith(PREFIX) and name[len(PREFIX):] in WRAPPABLE:
        base_name = name[len(PREFIX):]
        base = getattr(importlib.import_module(WRAPPABLE[base_name]), base_name)
        cls = _make_wrapper(base, name)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_wrapper(base: type, name: str) -> type:
    class EarlyLayersModel(base):
        def __init__(self, *, vllm_config, prefix: str = ""):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            config = vllm_config.model_config.hf_config
            self.tapped_layers = tuple(getattr(config, TAPPED))
            self.model._set_aux_hidden_state_layers(self.tapped_layers)
            self.hidden_width = config.hidden_size
            self.local_lm_head = _plain_local_lm_head(self, vllm_config)

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            if isinstance(out, tuple):  # (final, [early...]): one row-aligned tensor for the runner
                final, early = out
                return torch.cat([final, *early], dim=-1)
            return out  # a pipeline stage's intermediate tensors

        def compute_logits(self, hidden_states: torch.Tensor):
            width = self.hidden_width
            if hidden_states.shape[-1] == width:
                return super().compute_logits(hidden_states)
            rows = hidden_states.shape[0]
            logits = super().compute_logits(hidden_states[:, :width])
            early = hidden_states[:, width:].reshape(rows, -1, width).transpose(0, 1).contiguous()
            tap = EarlyRows(self.tapped_layers, early, norm=self.model.norm)
            if self.local_lm_head:
                tap.weight, tap.scale = self.lm_head.weight, float(self.logits_processor.scale)
            else:
                tap.project = super(EarlyLayersModel, self).compute_logits
            TAP.rows = tap if logits is not None else None
            return logits

    EarlyLayersModel.__name__ = EarlyLayersModel.__qualname__ = name
    return EarlyLayersModel


def _plain_local_lm_head(model, vllm_config) -> bool:
    """Whether early logits can be streamed from lm_head's weight: one rank holds all of it,
    unquantised, and no soft cap applies."""
    head = model.lm_head
    method = type(getattr(head, "quant_method", None)).__name__
    return (
        vllm_config.parallel_config.tensor_parallel_size == 1
        and method == "UnquantizedEmbeddingMethod"
        and getattr(model.logits_processor, "soft_cap", None) is None
        and isinstance(getattr(head, "weight", None), torch.Tensor)
    )


# --------------------------------------------------------------------------- the config


class LayerChoiceError(ValueError):
    """A layer setting the served model cannot meet. vLLM calls the overrides inside its
    ModelConfig, whose validation wraps this in pydantic's ValidationError; the plugin unwraps it
    (plugin.py) so that it reaches the user as a start-up error."""


class EarlyLayerOverrides:
    """An ``hf_overrides`` callable: switches the architecture to its early-layer wrapper and
    records the layers to tap (picklable, so it travels with the engine config)."""

    def __init__(self, settings: EarlyLayerSettings, user_overrides=None):
        self.settings = settings
        self.user_overrides = user_overrides

    def __call__(self, config):
        if callable(self.user_overrides):
            config = self.user_overrides(config)
        elif self.user_overrides:
            for key, value in self.user_overrides.items():
                setattr(config, key, value)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        architectures = list(getattr(config, "architectures", None) or [])
        if len(architectures) != 1 or architectures[0] not in WRAPPABLE:
            # vLLM also calls this on a dummy config (to read model_type) and may re-read an
            # already wrapped one; an unsupported model is refused by check_wrapped.
            return config
        num_layers = text.num_hidden_layers
        tied = bool(getattr(text, "tie_word_embeddings", False))
        try:
            sled, dola = self.settings.resolve(num_layers, tied)
        except ValueError as e:
            raise LayerChoiceError(f"real_vllm: {e}") from None
        config.architectures = [wrapper_name(architectures[0])]
        setattr(config, SLED_LAYERS, sled)
        setattr(config, DOLA_LAYERS, dola)
        setattr(config, TAPPED, sorted(set(sled) | set(dola)))
        setattr(config, SLED_NORM, self.settings.sled_early_norm)
        setattr(config, DOLA_NORM, self.settings.dola_early_norm)
        return config


def check_wrapped(hf_config) -> None:
    """After the engine config is built: the model must have become its wrapper."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not (architectures and architectures[0].startswith(PREFIX)):
        raise ValueError(
            f"real_vllm: SLED/DoLa need early-layer hidden states, which real_vllm provides for "
            f"{', '.join(WRAPPABLE)}; this model is {architectures or 'of unknown architecture'}. "
            "An architecture with the same structure can be added with "
            "real_vllm.integration.early_models.register_architecture(...)"
        )
