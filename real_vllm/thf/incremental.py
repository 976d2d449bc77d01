"""The serving forward of a sliding-window THF: per request, the last ``window`` keys and values
of every layer, so each step computes only the request's new tokens.

A sliding THF (THFConfig.attention == "sliding"; model.sliding_hidden is its reference
forward) attends at every layer to the last ``window`` positions only. A layer's keys and
values at a position depend on that layer's input there alone, so once computed they stay
valid as the sequence grows: a new token needs, per layer, its own query, key and value and
the cached keys and values of the ``window - 1`` positions before it (the key/value cache of
transformer decoding, here bounded by the window). The result equals the full sliding-window
forward over the request's whole sequence to float32 rounding (tests/test_thf.py).

Layout (Model Runner V2's style: slot-indexed tensors on the device): keys and values
[layers, slots, window, kv_heads, head_dim], a ring per slot (position p lives at p mod
window), rotated at the absolute position (model.rope); ``newest[slot]`` is the newest position
held, -1 when the slot holds nothing. A cache entry is written only for positions a caller
commits (tokens that stay in the request's sequence: not speculative drafts).

Rebuilding a slot (a new or resumed request, or one whose cache the caller cannot continue) is a
prefill over the last ``config.context`` = num_layers * (window - 1) + 1 tokens of its sequence:
the outputs of layer l are exact from (num_layers - l) * (window - 1) tokens into it, enough for
every layer's last ``window`` keys and values and the last token's output.
"""

from __future__ import annotations

import torch

from real_vllm.thf.model import THFModel, _rotate, rope


class SlidingKVCache:
    """Per-slot key/value rings of a sliding THF and one batched step over new tokens.

    backend: "torch" (step's own ATen ops, any device), "cpu" (the C++ op
    torch.ops.real_vllm.thf_sliding_step: the same ops without the Python around them, for
    float32 on the CPU) or "auto" (cpu where it applies, else torch).
    """

    def __init__(self, model: THFModel, num_slots: int, device: torch.device, backend: str = "auto"):
        config = model.config
        if not config.sliding:
            raise ValueError("SlidingKVCache needs a sliding-window THF (THFConfig.attention = 'sliding')")
        llama = model.backbone.config
        self.model = model
        self.window = config.window
        self.context = config.context
        dtype = next(model.parameters()).dtype
        # One slot more than asked: the step writes every new column somewhere (no host sync to
        # pick the committed ones), the uncommitted ones into this last, never-read slot.
        self.trash = num_slots
        shape = (config.num_layers, num_slots + 1, config.window, llama.num_key_value_heads, llama.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.newest = torch.full((num_slots,), -1, dtype=torch.long, device=device)
        # Each layer's query/key/value and gate/up projections as one matrix each (fewer, larger
        # GEMMs: at decode a step is one token a row, so per-op overhead is most of its cost).
        # Copied here: the cache serves the weights the model had when it was built.
        self.fused = []
        for layer in model.backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.fused.append((_fuse(attn.q_proj, attn.k_proj, attn.v_proj), _fuse(mlp.gate_proj, mlp.up_proj)))
        self.native = _native_step(self, backend)

    def reset(self, slot: int) -> None:
        self.newest[slot] = -1

    def move(self, src: int, dst: int) -> None:
        """V1 one-way move: dst takes src's cache, src becomes empty."""
        self.keys[:, dst] = self.keys[:, src]
        self.values[:, dst] = self.values[:, src]
        self.newest[dst] = self.newest[src]
        self.newest[src] = -1

    def swap(self, a: int, b: int) -> None:
        for t in (self.keys, self.values):
            t[:, [a, b]] = t[:, [b, a]]
        self.newest[[a, b]] = self.newest[[b, a]]

    @torch.inference_mode()
    def step(self, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, real: torch.Tensor,
             base: torch.Tensor, commit_end: torch.Tensor) -> torch.Tensor:
        """THF outputs [R, T, K] at each row's new tokens; commits what the rows say.

        slots [R]: each row's slot. tokens, positions [R, T]: the row's new tokens at their
        absolute positions, consecutive and right-aligned (column T - 1 is the row's last), in
        columns where ``real`` [R, T] is set (the others are padding on the left). base [R]: the
        newest position of the slot's cache the row continues from (its first real column is
        base + 1), -1 for a row computed without the cache (its first real column then starts
        the sequence or lies ``context`` tokens before its last). commit_end [R]: write the keys
        and values of the row's positions up to this one (the last ``window`` of them) into
        the slot's cache and make it the slot's newest; -1 for none. At most one row of a slot
        commits; every row reads the cache as it was before the step.
        """
        if self.native is not None:
            return self.native(slots, tokens, positions, real, base, commit_end)
        model, width = self.model, self.window
        backbone = model.backbone
        rows, length = tokens.shape
        x = backbone.embed_tokens(tokens)
        cos, sin = rope(model, positions, x.dtype)
        ring = torch.arange(width, device=tokens.device)
        # The position each ring entry holds (p mod window == entry, within the window up to base).
        held = base[:, None] - torch.remainder(base[:, None] - ring[None, :], width)
        held_valid = (base[:, None] >= 0) & (held >= 0)
        behind_held = positions[:, :, None] - held[:, None, :]  # >= 1: a held key precedes every new query
        sees_held = held_valid[:, None, :] & (behind_held < width)
        behind_new = positions[:, :, None] - positions[:, None, :]
        columns = torch.arange(length, device=tokens.device)
        sees_new = (behind_new >= 0) & (behind_new < width) & real[:, None, :]
        # A padding query sees itself only, so that no softmax row is empty (see sliding_hidden).
        sees_new = sees_new | (columns[:, None] == columns[None, :])
        visible = torch.cat((sees_held, sees_new), dim=-1)  # [R, T, window + T]
        kv_heads = self.keys.shape[3]
        groups = backbone.layers[0].self_attn.config.num_attention_heads // kv_heads
        # Additive mask, broadcast over [R, kv_heads, groups, T, window + T] (a KV head's query heads).
        bias = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill_(~visible, float("-inf"))
        bias = bias[:, None, None]
        commit = real & (positions <= commit_end[:, None]) & (positions > commit_end[:, None] - width)
        # Ring entries as one flat index (slot * window + entry) into a [slots * window, ...] view.
        writes = (torch.where(commit, slots[:, None], self.trash) * width + torch.remainder(positions, width)).flatten()
        for i, layer in enumerate(backbone.layers):
            attn, (qkv, gate_up) = layer.self_attn, self.fused[i]
            hidden = _rms_norm(layer.input_layernorm, x)
            projected = torch.nn.functional.linear(hidden, *qkv).view(rows, length, -1, attn.head_dim)
            queries, keys, values = projected.split([groups * kv_heads, kv_heads, kv_heads], dim=2)
            queries = _rotate(queries.transpose(1, 2), cos, sin)  # [R, heads, T, D]
            keys = _rotate(keys.transpose(1, 2), cos, sin).transpose(1, 2)  # [R, T, kv_heads, D]
            all_keys = torch.cat((self.keys[i, slots], keys), dim=1)  # [R, window + T, kv_heads, D]
            all_values = torch.cat((self.values[i, slots], values), dim=1)
            scores = queries.reshape(rows, kv_heads, groups * length, -1) @ all_keys.permute(0, 2, 3, 1)
            scores = scores.view(rows, kv_heads, groups, length, -1) * attn.scaling + bias
            weights = torch.softmax(scores, dim=-1).view(rows, kv_heads, groups * length, -1)
            out = (weights @ all_values.transpose(1, 2)).view(rows, -1, length, attn.head_dim)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
            gate, up = torch.nn.functional.linear(_rms_norm(layer.post_attention_layernorm, x), *gate_up).chunk(2, -1)
            x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
            # Written after the layer's attention: every row of the step reads the cache as it was.
            self.keys[i].view(-1, *keys.shape[2:]).index_copy_(0, writes, keys.flatten(0, 1))
            self.values[i].view(-1, *values.shape[2:]).index_copy_(0, writes, values.flatten(0, 1))
        # The committing row's commit_end for its slot; slots of non-committing rows only keep theirs.
        newest = self.newest.clone().scatter_reduce_(0, slots, torch.where(commit_end >= 0, commit_end, -2),
                                                     reduce="amax", include_self=False)
        self.newest.copy_(torch.where(newest == -2, self.newest, newest))
        return torch.exp(model.head(_rms_norm(backbone.norm, x)).float())


def _native_step(cache: SlidingKVCache, backend: str):
    """The C++ step bound to ``cache``'s weights and rings, or None where the torch step runs."""
    if backend not in ("auto", "torch", "cpu"):
        raise ValueError(f"SlidingKVCache backend must be 'auto', 'torch' or 'cpu', got {backend!r}")
    if backend == "torch":
        return None
    model, backbone = cache.model, cache.model.backbone
    llama = backbone.config
    layers = backbone.layers
    eps = {norm.variance_epsilon for layer in layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)}
    eps.add(backbone.norm.variance_epsilon)
    embed = backbone.embed_tokens
    reasons = [why for why, bad in (
        ("the cache is not float32 on the CPU", cache.keys.device.type != "cpu" or cache.keys.dtype != torch.float32),
        ("the MLP is not SiLU", llama.hidden_act != "silu"),
        ("a projection has a bias", any(b is not None for qkv, gate_up in cache.fused for _, b in (qkv, gate_up))
         or any(layer.self_attn.o_proj.bias is not None or layer.mlp.down_proj.bias is not None for layer in layers)),
        ("the norms' epsilons differ", len(eps) != 1),
        ("the layers' attention scales differ", len({layer.self_attn.scaling for layer in layers}) != 1),
    ) if bad]
    op = _native_op()
    if isinstance(op, str):
        reasons.append(op)
    if reasons:
        if backend == "cpu":
            raise ValueError(f"SlidingKVCache backend 'cpu' is not available: {'; '.join(reasons)}")
        return None
    weights = []
    for layer, (qkv, gate_up) in zip(layers, cache.fused):
        weights += [layer.input_layernorm.weight.detach(), qkv[0], layer.self_attn.o_proj.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(), gate_up[0], layer.mlp.down_proj.weight.detach()]
    if isinstance(embed, torch.nn.Embedding):
        lookup, proj = embed.weight.detach(), None
    else:  # the factorised embedding (model.FactorizedEmbedding)
        lookup, proj = embed.lookup.weight.detach(), embed.proj.weight.detach()
    rotary = backbone.rotary_emb
    inv_freq = rotary.inv_freq.detach().to(torch.float64)
    fixed = dict(rope_scale=float(rotary.attention_scaling), eps=float(eps.pop()),
                 scaling=float(layers[0].self_attn.scaling), heads=int(llama.num_attention_heads))
    # Detached once here: the step is on REAL's per-token path.
    norm, head_weight, head_bias = backbone.norm.weight.detach(), model.head.weight.detach(), model.head.bias.detach()

    def step(slots, tokens, positions, real, base, commit_end):
        return op(weights, lookup, proj, norm, head_weight, head_bias, cache.keys, cache.values,
                  cache.newest, slots.long().contiguous(), tokens.long().contiguous(), positions.long().contiguous(),
                  real.bool().contiguous(), base.long().contiguous(), commit_end.long().contiguous(), inv_freq,
                  **fixed)

    return step


def _native_op():
    """torch.ops.real_vllm.thf_sliding_step, or why it is not there."""
    try:
        import real_vllm._C  # noqa: F401  (registers torch.ops.real_vllm.*)
    except ImportError as e:
        return f"the C++ extension real_vllm._C is not built ({e})"
    op = getattr(torch.ops.real_vllm, "thf_sliding_step", None)
    return op if op is not None else "the C++ extension was built before thf_sliding_step existed (rebuild it)"


def _fuse(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of the Linear that computes ``linears`` side by side."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    biases = [lin.bias for lin in linears]
    return weight, (None if all(b is None for b in biases) else
                    torch.cat([b.detach() if b is not None else weight.new_zeros(lin.out_features)
                               for b, lin in zip(biases, linears)]))


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (``norm``'s weight and epsilon) as one fused op."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
