"""THFModel: a small causal LM backbone with one linear head that outputs entropy curves.

REAL sampling (arXiv 2406.07735, docs/algorithms.md §2.1): dropout 0.1 on the backbone's last hidden
states, one Linear(hidden, K) initialised to zero, exp() on every output. The paper fine-tunes
Pythia-70M; here the backbone is a transformers LlamaModel trained from scratch on the family's
tokenizer, because no small pretrained model with the SmolLM2 vocabulary exists offline.

Default backbone (DEFAULT_BACKBONE, for the SmolLM2 tokenizer's 49,152 tokens): 2 layers, hidden
128, 2 heads of 64 (1 KV head), MLP 256, RoPE, 1,024 positions, and a factorised input embedding
(vocab x 48 lookup, then 48 -> 128): 2.7M parameters (0.3M outside the embedding), a 5.3 MB
float16 checkpoint. It is small because REAL runs it at every decode step on every REAL row's
40-token window: 40 tokens of THF per generated token. The earlier default (4 layers, hidden
256: 2.4M non-embedding parameters) cost 85 ms per step at 32 rows on one CPU core, a third of
the default model's own decode step, for a held-out loss only 3% lower (1.475 vs 1.521; see
checkpoints/smollm2/RECIPE.md); this one costs 12 ms, and 7 ms with the decode-time forward
(predict_last_of_windows; benchmarks/bench_thf.py). A full 49,152 x 128 embedding would be
6.3M parameters, most of the model, for a task that needs coarse token identity plus context,
so the embedding is low-rank (as in ALBERT). Checkpoints are stored in float16 (half the bytes;
a trained net's weights lie far inside float16's range, which save() checks) and loaded into
float32 by default.

Checkpoint folder (self-contained; `THFModel.load(dir)` needs nothing else):
    model.safetensors       weights
    thf_config.json         THFConfig: curve form, family sizes s (s_ref = max), member names,
                            window, backbone config, tokenizer fingerprint, training recipe and
                            metrics
    tokenizer files         copied from the family, so `load_tokenizer(dir)` gives the THF tokenizer

The runtime calls `predict_last_of_windows(model, ids, lengths)` on each REAL row's last
`config.window` tokens (predict_last is its reference) and turns the result into a threshold with
`curves.residual_entropy` and `curves.threshold`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from real_vllm.thf import curves
from real_vllm.thf.fingerprint import tokenizer_fingerprint
from real_vllm.utils import atomic_write

FORMAT = "real_vllm.thf"
FORMAT_VERSION = 2  # written for sliding-window THFs; block-window ones keep version 1
FORMAT_VERSIONS = (1, 2)  # read: 1 has no "attention" field (block windows)
CONFIG_FILE = "thf_config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_WINDOW = 40  # docs/algorithms.md §2.2: THF reads the last 40 tokens at decode time
# How a THF's attention sees its window (THFConfig.attention):
#   "block": trained on whole blocks, served on the last `window` tokens recomputed every step
#            (positions restart in each window), so nothing can be cached across steps;
#   "sliding": every layer attends causally to the last `window` positions only (itself and the
#            window - 1 before it), in training and serving alike, so the serving forward keeps
#            each request's last `window` keys and values per layer and computes only new tokens
#            (real_vllm/thf/incremental.py). Its output at a token depends on the last
#            num_layers * (window - 1) + 1 tokens (THFConfig.context).
ATTENTION_MODES = ("block", "sliding")

DEFAULT_BACKBONE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
}
DEFAULT_EMBEDDING_RANK = 48


class THFCheckpointError(RuntimeError):
    """A THF checkpoint folder is missing, incomplete, corrupt or of another format."""


@dataclasses.dataclass
class THFConfig:
    """Everything needed to rebuild a THFModel and to use its outputs.

    sizes: the family's s = ln(non-embedding parameter count), ascending, one per member;
    s_ref = max(sizes) is the size REAL measures the residual entropy at. backbone: LlamaConfig
    keyword arguments (vocab_size included). embedding_rank: None for a plain vocab x hidden
    embedding. tokenizer: {"fingerprint", "vocab_size", "files"}. training: recipe and metrics.
    """

    sizes: list[float]
    backbone: dict
    curve: str = curves.DEFAULT_CURVE
    members: list[str] = dataclasses.field(default_factory=list)
    window: int = DEFAULT_WINDOW
    embedding_rank: int | None = DEFAULT_EMBEDDING_RANK
    dropout: float = 0.1
    tokenizer: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    attention: str = "block"

    def __post_init__(self):
        curves.check_curve(self.curve)
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        self.sizes = [float(s) for s in self.sizes]
        if not self.sizes:
            raise ValueError("a THF needs at least one family size")
        if self.members and len(self.members) != len(self.sizes):
            raise ValueError(f"{len(self.members)} member names for {len(self.sizes)} sizes")
        if "vocab_size" not in self.backbone:
            raise ValueError("the backbone config needs vocab_size")

    @property
    def s_ref(self) -> float:
        return max(self.sizes)

    @property
    def num_outputs(self) -> int:
        return curves.num_outputs(self.curve)

    @property
    def sliding(self) -> bool:
        return self.attention == "sliding"

    @property
    def num_layers(self) -> int:
        return int(self.backbone.get("num_hidden_layers", DEFAULT_BACKBONE["num_hidden_layers"]))

    @property
    def context(self) -> int:
        """Tokens the output at a position depends on: the window for a block THF (served on its
        last `window` tokens); for a sliding one its receptive field, each layer reaching
        window - 1 tokens further back."""
        return self.num_layers * (self.window - 1) + 1 if self.sliding else self.window


class FactorizedEmbedding(nn.Module):
    """vocab -> rank lookup, then a rank -> hidden projection (ALBERT-style low-rank embedding)."""

    def __init__(self, vocab_size: int, rank: int, hidden: int, std: float):
        super().__init__()
        self.lookup = nn.Embedding(vocab_size, rank)
        self.proj = nn.Linear(rank, hidden, bias=False)
        # The product has entries of std `std`, the same as a plain Llama embedding's.
        nn.init.normal_(self.lookup.weight, std=std)
        nn.init.normal_(self.proj.weight, std=rank ** -0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.lookup(input_ids))


class THFModel(nn.Module):
    """Backbone -> dropout -> Linear(hidden, K) -> exp. forward gives [B, T, K] float32."""

    def __init__(self, config: THFConfig):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.config = config
        llama = LlamaConfig(**config.backbone)
        llama._attn_implementation = "sdpa"
        self.backbone = LlamaModel(llama)
        if config.embedding_rank:
            self.backbone.set_input_embeddings(FactorizedEmbedding(
                llama.vocab_size, config.embedding_rank, llama.hidden_size, llama.initializer_range))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(llama.hidden_size, config.num_outputs)
        # Zero head: every output starts at exp(0) = 1, the same smooth curve for every token.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.sliding:
            hidden = sliding_hidden(self, input_ids, attention_mask, position_ids)
        else:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=False).last_hidden_state
        # exp in float32: a bfloat16 backbone would otherwise round the curve parameters coarsely.
        return torch.exp(self.head(self.dropout(hidden)).float())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
             dtype: torch.dtype = torch.float16) -> Path:
        """Write the checkpoint folder: weights in `dtype`, the tokenizer files, thf_config.json last.

        The tokenizer files named in config.tokenizer["files"] are copied from `tokenizer_dir`
        (a loaded checkpoint's own folder works). Each file is written beside its final name and
        renamed into place, and thf_config.json goes last, so a folder whose config exists is
        complete.
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = self.config.tokenizer.get("files") or []
        if not files:
            raise ValueError("config.tokenizer['files'] is empty: the checkpoint would have no tokenizer")
        for name in files:
            src, dst = Path(tokenizer_dir) / name, out / name
            if not src.is_file():
                raise FileNotFoundError(f"tokenizer file {src} is missing")
            if not (dst.exists() and os.path.samefile(src, dst)):
                atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))

        state = {}
        for name, tensor in self.state_dict().items():
            t = tensor.detach().to("cpu", torch.float32)
            if not torch.isfinite(t).all():
                raise ValueError(f"weight {name} holds NaN or inf; not saving a broken THF")
            if dtype != torch.float32 and t.abs().max() > torch.finfo(dtype).max:
                raise ValueError(f"weight {name} exceeds the range of {dtype}; save with dtype=torch.float32")
            state[name] = t.to(dtype).contiguous()
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))

        doc = {"format": FORMAT, "format_version": FORMAT_VERSION if self.config.sliding else 1,
               "weights_dtype": str(dtype).removeprefix("torch."), **dataclasses.asdict(self.config),
               "s_ref": self.config.s_ref, "num_outputs": self.config.num_outputs,
               "num_parameters": self.num_parameters()}
        atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n"))
        return out

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> THFModel:
        """Load a checkpoint folder written by save(), in eval mode. Raises THFCheckpointError
        with the reason when the folder is not a complete, readable THF checkpoint."""
        from safetensors import safe_open

        folder = Path(ckpt_dir)
        config = read_config(folder)
        try:
            model = cls(config)
        except Exception as exc:
            raise THFCheckpointError(f"{folder}: {CONFIG_FILE} describes a model that cannot be built: {exc}") from exc
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise THFCheckpointError(f"{folder} has no {WEIGHTS_FILE}; it is not a complete THF checkpoint")
        try:
            with safe_open(str(weights), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise THFCheckpointError(f"{weights} is unreadable (truncated or corrupt): {exc}") from exc
        expected = model.state_dict()
        missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
        wrong = [k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise THFCheckpointError(
                f"{weights} does not match {CONFIG_FILE}: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}, wrong shapes {sorted(wrong)[:3]}")
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
        missing_tok = [n for n in config.tokenizer.get("files", []) if not (folder / n).is_file()]
        if missing_tok:
            raise THFCheckpointError(f"{folder} lacks its tokenizer files {missing_tok}")
        return model.to(device=device, dtype=dtype).eval()


def read_config(ckpt_dir: str | os.PathLike) -> THFConfig:
    """The THFConfig of a checkpoint folder, without loading weights (THFCheckpointError if bad)."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        raise THFCheckpointError(f"THF checkpoint folder {folder} does not exist "
                                 f"(train one with `real-vllm thf train DATA_DIR --out {folder}`)")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise THFCheckpointError(f"{folder} is not a THF checkpoint: it has no {CONFIG_FILE} "
                                 f"(an unfinished training run leaves only its train state)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise THFCheckpointError(f"{path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise THFCheckpointError(f"{path} is not a {FORMAT} config")
    if doc.get("format_version") not in FORMAT_VERSIONS:
        raise THFCheckpointError(f"{path} has format version {doc.get('format_version')}; "
                                 f"this real_vllm reads versions {FORMAT_VERSIONS}")
    if doc["format_version"] == 1 and doc.get("attention", "block") != "block":
        raise THFCheckpointError(f"{path}: format version 1 holds block-window THFs only")
    fields = {f.name for f in dataclasses.fields(THFConfig)}
    try:
        return THFConfig(**{k: v for k, v in doc.items() if k in fields})
    except (TypeError, ValueError) as exc:
        raise THFCheckpointError(f"{path} is not a valid THF config: {exc}") from exc


def load_tokenizer(ckpt_dir: str | os.PathLike):
    """The THF tokenizer stored in a checkpoint (or data) folder; checks its fingerprint."""
    from transformers import AutoTokenizer

    folder = Path(ckpt_dir)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if (folder / CONFIG_FILE).is_file():
        expected = read_config(folder).tokenizer.get("fingerprint")
        if expected and tokenizer_fingerprint(tok) != expected:
            raise THFCheckpointError(f"the tokenizer files in {folder} were changed after training "
                                     f"(fingerprint differs from {CONFIG_FILE})")
    return tok


@torch.inference_mode()
def predict_last(model: THFModel, token_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """THF outputs at each row's last real token: [B, K] float32.

    token_ids [B, T] long; attention_mask [B, T] (1 = real token, 0 = padding), None for no
    padding. Rows may be padded on the left (the usual batch of windows of different lengths) or
    on the right. Positions count real tokens only, so a padded row gives what it gives alone.
    One batched forward, no per-row Python work. Every row needs at least one real token (an
    all-padding row gives meaningless values; checking would cost a device sync per step).
    """
    if model.training:
        raise RuntimeError("predict_last needs model.eval(): dropout would randomise the forecast")
    if attention_mask is None:
        out = model(token_ids)
        return out[:, -1]
    mask = attention_mask.to(torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(token_ids, attention_mask=mask, position_ids=positions)
    # Index of the last 1 in each row: T - 1 minus the first 1 of the reversed row.
    last = mask.shape[-1] - 1 - mask.flip(-1).argmax(-1)
    return out[torch.arange(out.shape[0], device=out.device), last]


@torch.inference_mode()
def predict_last_of_windows(model: THFModel, windows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """predict_last for right-aligned windows (the decode-time input), computing less: [B, K].

    windows [B, T] long, left-padded; lengths [B] real tokens per row (>= 1). Only the last
    token's outputs are wanted, so the last layer needs every token's keys and values but its
    query, attention output and MLP at the last token alone: for the default 2-layer backbone
    that is 43% fewer FLOPs than the full forward, and none of transformers' per-call mask
    building. Uses the backbone's own modules (norms, projections, MLP, rotary embedding); equal
    to predict_last(model, windows, mask) to float32 rounding (tests/test_thf.py).
    """
    if model.training:
        raise RuntimeError("predict_last_of_windows needs model.eval(): dropout would randomise the forecast")
    if model.config.sliding:  # the re-tokenising path recomputes a sliding THF on its receptive field
        columns = torch.arange(windows.shape[1], device=windows.device)
        return predict_last(model, windows, columns[None, :] >= (windows.shape[1] - lengths)[:, None])
    backbone = model.backbone
    batch, width = windows.shape
    start = (width - lengths)[:, None]  # each row's first real token
    columns = torch.arange(width, device=windows.device)
    real = columns[None, :] >= start
    positions = (columns[None, :] - start).clamp_min(0)  # as predict_last: real tokens count from 0
    x = backbone.embed_tokens(windows)
    cos, sin = backbone.rotary_emb(x, positions)
    # Key j is visible to query i when j <= i and j is real; a padding query sees itself only, so
    # that no softmax row is empty (its output is never read, but a NaN there would reach real
    # rows through the next layer's values).
    visible = (columns[None, :, None] >= columns[None, None, :]) & (
        real[:, None, :] | torch.eye(width, dtype=torch.bool, device=windows.device))
    layers = backbone.layers
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        hidden = layer.input_layernorm(x)
        keys = attn.k_proj(hidden).view(batch, width, -1, attn.head_dim).transpose(1, 2)
        values = attn.v_proj(hidden).view(batch, width, -1, attn.head_dim).transpose(1, 2)
        if i == len(layers) - 1:  # from here on only the last token
            x, hidden, q_cos, q_sin, mask = x[:, -1:], hidden[:, -1:], cos[:, -1:], sin[:, -1:], visible[:, -1:]
        else:
            q_cos, q_sin, mask = cos, sin, visible
        queries = attn.q_proj(hidden).view(batch, hidden.shape[1], -1, attn.head_dim).transpose(1, 2)
        queries = _rotate(queries, q_cos, q_sin)
        keys = _rotate(keys, cos, sin)
        out = torch.nn.functional.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask[:, None], scale=attn.scaling,
            enable_gqa=queries.shape[1] != keys.shape[1])
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, hidden.shape[1], -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return torch.exp(model.head(backbone.norm(x[:, -1])).float())


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [B, heads, T, D] with cos/sin [B, T, D] (the rotate-half convention of Llama)."""
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return t * cos[:, None] + rotated * sin[:, None]


def rope(model: THFModel, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., T, head_dim] of the backbone's rotary embedding at ``positions``.

    The angles are formed in float64: a sliding THF is served at a request's absolute positions
    (its cached keys keep their rotation), and in float32 position * frequency would lose the
    relative angle at long positions (a float32 ulp at 1e5 is 0.008 rad); in float64 a
    rotation is exact to float32 rounding however long the request, so attention stays a
    function of relative offsets only, as in training.
    """
    rotary = model.backbone.rotary_emb
    angles = positions.to(torch.float64)[..., None] * rotary.inv_freq.to(device=positions.device, dtype=torch.float64)
    angles = torch.cat((angles, angles), dim=-1)
    scale = rotary.attention_scaling
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def sliding_hidden(model: THFModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The sliding-window backbone's last hidden states [B, T, hidden] (the reference forward).

    Every layer is Llama's (the backbone's own norms, projections, MLP and rotary frequencies),
    with attention banded: a query at position p sees the real keys at positions p - window + 1
    .. p (itself and the window - 1 before it). attention_mask [B, T] (1 = real token; left or
    right padding) and position_ids [B, T] as in LlamaModel; positions default to the count of
    real tokens from 0. Training (whole blocks) and the serving twin (thf/incremental.py) compute
    this same function.
    """
    backbone, width = model.backbone, model.config.window
    batch, length = input_ids.shape
    real = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(torch.bool))
    positions = (real.long().cumsum(-1) - 1).clamp_min(0) if position_ids is None else position_ids.long()
    x = backbone.embed_tokens(input_ids)
    cos, sin = rope(model, positions, x.dtype)
    columns = torch.arange(length, device=input_ids.device)
    behind = positions[:, :, None] - positions[:, None, :]  # query's position minus key's
    visible = ((columns[:, None] >= columns[None, :]) & (behind >= 0) & (behind < width) & real[:, None, :])
    # A padding query sees itself only: its output is never read, but an empty softmax row would
    # be NaN and reach real rows through the next layer's values.
    visible = visible | torch.eye(length, dtype=torch.bool, device=input_ids.device)
    for layer in backbone.layers:
        attn = layer.self_attn
        hidden = layer.input_layernorm(x)
        heads = lambda proj: proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # noqa: E731
        queries, keys, values = heads(attn.q_proj), heads(attn.k_proj), heads(attn.v_proj)
        out = torch.nn.functional.scaled_dot_product_attention(
            _rotate(queries, cos, sin), _rotate(keys, cos, sin), values, attn_mask=visible[:, None],
            scale=attn.scaling, enable_gqa=queries.shape[1] != keys.shape[1])
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return backbone.norm(x)
