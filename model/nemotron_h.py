"""Nemotron-H: a stack of pre-norm residual blocks (Mamba-2, NoPE attention, MoE, MLP) chosen by a pattern.

Module and parameter names follow the Hugging Face checkpoint (`backbone.layers.{i}.mixer.*`), except that routed
experts are stacked into 3-D tensors; `model/loader.py` maps between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.cache import StatePool
from model.config import ATTENTION, MAMBA, MOE, NemotronHConfig
from model.mamba2 import Mamba2Mixer
from model.moe import MLP, MoE


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, weight multiply included, then cast back to the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query attention without positional encoding; optional per-slot KV cache."""

    def __init__(self, config: NemotronHConfig, layer_idx: int) -> None:
        super().__init__()
        c = self.config = config
        self.layer_idx = layer_idx
        q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, q_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, kv_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, kv_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(q_dim, c.hidden_size, bias=c.attention_bias)

    def forward(self, u: torch.Tensor, pool: StatePool | None = None,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """u: (b, t, hidden) -> (b, t, hidden). With a pool, attends to each slot's cached tokens too."""
        c, (b, t, _) = self.config, u.shape
        q = self.q_proj(u).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(u).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(u).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        if pool is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k, v, mask = self._extend_cache(k, v, pool, slots)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))

    def _extend_cache(self, k: torch.Tensor, v: torch.Tensor, pool: StatePool,
                      slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new K/V at each slot's length; return cached K/V (b, kv, L, d) and the mask (b, 1, t, L)."""
        t = k.shape[2]
        start = pool.lengths[slots]  # (b,)
        pos = start[:, None] + torch.arange(t, device=start.device)  # (b, t) position of each new token
        end = int(start.max()) + t  # read only as far as the longest row needs
        cache_k, cache_v = pool.k[self.layer_idx], pool.v[self.layer_idx]
        cache_k[slots[:, None], :, pos] = k.transpose(1, 2).to(cache_k.dtype)  # (b, t, kv, d)
        cache_v[slots[:, None], :, pos] = v.transpose(1, 2).to(cache_v.dtype)
        mask = torch.arange(end, device=pos.device) <= pos[:, :, None]  # (b, t, L): causal, per-row length
        return cache_k[slots, :, :end], cache_v[slots, :, :end], mask[:, None]

    def decode(self, u: torch.Tensor, pool: StatePool, active: torch.Tensor | None = None,
               span: int | None = None) -> torch.Tensor:
        """One token for every slot of the pool: u (S, hidden) -> (S, hidden); row s is slot s.

        Attends over the first `span` (default max_len) cache positions with a length mask rather than slicing
        to the longest row, which would be a host sync and a changing shape. Rows where `active` is False
        rewrite the K/V already there.
        """
        c, b = self.config, u.shape[0]
        kv, group = c.num_key_value_heads, c.num_attention_heads // c.num_key_value_heads
        q = self.q_proj(u).view(b, kv, group, c.head_dim)  # query head i reads kv head i // group
        k = self.k_proj(u).view(b, kv, c.head_dim)
        v = self.v_proj(u).view(b, kv, c.head_dim)
        span = pool.max_len if span is None else span
        cache_k, cache_v = pool.k[self.layer_idx], pool.v[self.layer_idx]
        # The clamp only guards inactive slots (a finished sequence may have filled its slot); the caller keeps
        # every active row's length below span.
        pos = pool.lengths.clamp(max=span - 1)  # (S,) where the new token goes
        rows = torch.arange(b, device=u.device)
        k, v = k.to(cache_k.dtype), v.to(cache_v.dtype)
        if active is not None:
            k = torch.where(active[:, None, None], k, cache_k[rows, :, pos])
            v = torch.where(active[:, None, None], v, cache_v[rows, :, pos])
        cache_k[rows, :, pos] = k  # (S, kv, d)
        cache_v[rows, :, pos] = v
        # Plain matmuls: for one query per row they beat the CPU flash-attention kernel by a wide margin.
        scores = (q @ cache_k[:, :, :span].mT).float() * c.head_dim ** -0.5  # (S, kv, group, span)
        future = torch.arange(span, device=u.device) > pos[:, None]  # (S, span)
        probs = scores.masked_fill(future[:, None, None], -torch.inf).softmax(-1)
        o = probs.to(cache_v.dtype) @ cache_v[:, :, :span]  # (S, kv, group, d)
        return self.o_proj(o.reshape(b, -1).to(u.dtype))


class Block(nn.Module):
    """h + mixer(RMSNorm(h)), the mixer chosen by the layer's pattern letter."""

    def __init__(self, config: NemotronHConfig, layer_idx: int) -> None:
        super().__init__()
        self.kind = config.hybrid_override_pattern[layer_idx]
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        if self.kind == MAMBA:
            self.mixer = Mamba2Mixer(config, layer_idx)
        elif self.kind == ATTENTION:
            self.mixer = Attention(config, layer_idx)
        elif self.kind == MOE:
            self.mixer = MoE(config)
        else:
            self.mixer = MLP(config.hidden_size, config.intermediate_size, config.mlp_bias)

    def forward(self, h: torch.Tensor, pool: StatePool | None, slots: torch.Tensor | None) -> torch.Tensor:
        """h: (b, t, hidden) residual stream -> the same, one layer later."""
        u = self.norm(h)
        if self.kind in (MAMBA, ATTENTION):
            return h + self.mixer(u, pool, slots)
        return h + self.mixer(u)

    def decode(self, h: torch.Tensor, pool: StatePool, active: torch.Tensor | None, span: int | None) -> torch.Tensor:
        """`forward` for one token in every slot: h (S, hidden); see `NemotronHForCausalLM.decode`."""
        u = self.norm(h)
        if self.kind == ATTENTION:
            return h + self.mixer.decode(u, pool, active, span)
        if self.kind == MAMBA:
            return h + self.mixer.decode(u, pool, active)
        if self.kind == MOE:
            return h + self.mixer.decode(u)
        return h + self.mixer(u)


class Backbone(nn.Module):
    """Embedding, the layer stack and the final norm (the checkpoint's `backbone.*`)."""

    def __init__(self, config: NemotronHConfig) -> None:
        super().__init__()
        # randn rather than the default normal_(), which is slow on the meta device (it imports the compiler)
        weight = torch.randn(config.vocab_size, config.hidden_size)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)


class NemotronHForCausalLM(nn.Module):
    """The language model. Load a checkpoint with `model.load`; build random with `NemotronHForCausalLM(config)`."""

    def __init__(self, config: NemotronHConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def forward(self, input_ids: torch.Tensor, pool: StatePool | None = None, slots: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """input_ids (B, T) -> float32 logits (B, T, V), or (B, 1, V) for the last position if `last_only`.

        Without a pool: a full causal forward from empty state. With a pool and `slots` (B,): each row continues
        the sequence in its slot, the pool is updated in place and `lengths[slots]` grows by T.
        """
        if (pool is None) != (slots is None):
            raise ValueError("pass both `pool` and `slots`, or neither")
        if pool is not None:  # checked up front so a failed call leaves the pool untouched
            end = int(pool.lengths[slots].max()) + input_ids.shape[1]
            if end > pool.max_len:
                raise ValueError(f"a sequence would reach {end} tokens but the StatePool's max_len is {pool.max_len}")
        h = self.backbone.embeddings(input_ids)
        for block in self.backbone.layers:
            h = block(h, pool, slots)
        if pool is not None:
            pool.lengths[slots] += input_ids.shape[1]
        if last_only:
            h = h[:, -1:]
        return self.lm_head(self.backbone.norm_f(h)).float()

    def decode(self, input_ids: torch.Tensor, pool: StatePool, active: torch.Tensor | None = None,
               span: int | None = None) -> torch.Tensor:
        """One token for every slot of the pool: input_ids (S,) -> float32 logits (S, V); row s is slot s.

        The same computation as `forward(input_ids[:, None], pool, all slots)`, but with static shapes and no
        host syncs, so `torch.compile` can capture a whole decode step. Rows where `active` (S,) bool is False
        compute garbage and leave their slot untouched, which keeps the batch at S rows whoever is running.
        Attention reads the first `span` cache positions (default max_len): every active slot's length must be
        below it (the engine, which knows the lengths, passes a power of two).
        """
        h = self.backbone.embeddings(input_ids)
        for block in self.backbone.layers:
            h = block.decode(h, pool, active, span)
        pool.lengths.add_(1 if active is None else active.long())
        return self.lm_head(self.backbone.norm_f(h)).float()

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the bulk of the parameters (the router and a few Mamba scalars stay float32)."""
        return self.lm_head.weight.dtype

    def new_pool(self, num_slots: int, max_len: int) -> StatePool:
        """A StatePool matching this model's config, dtype and device."""
        return StatePool(self.config, num_slots, max_len, dtype=self.dtype, device=self.device)


def count_parameters(config: NemotronHConfig) -> tuple[int, int]:
    """(total, active per token) parameter counts; active counts only top-k routed experts, plus embeddings/head."""
    with torch.device("meta"):
        model = NemotronHForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    per_expert = 2 * config.moe_intermediate_size * config.hidden_size
    idle = config.n_routed_experts - config.num_experts_per_tok
    return total, total - len(config.layers_of(MOE)) * idle * per_expert

