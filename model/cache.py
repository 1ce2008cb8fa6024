"""Preallocated per-slot inference state: Mamba conv/SSM state and the attention KV cache.

A slot holds one sequence. Mamba layers carry constant-size state; attention layers carry K/V up to `max_len`
tokens. `lengths[s]` is how many tokens slot s has consumed; attention reads its cache up to that length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ATTENTION, MAMBA, NemotronHConfig


@dataclass
class SlotState:
    """A copy of one slot's state (K/V only up to its length), for prefix reuse or rollback."""

    conv: dict[int, torch.Tensor]  # layer -> (conv_dim, K-1)
    ssm: dict[int, torch.Tensor]  # layer -> (H, P, N) float32
    k: dict[int, torch.Tensor]  # layer -> (kv_heads, length, head_dim)
    v: dict[int, torch.Tensor]
    length: int


class StatePool:
    """Inference state for `num_slots` sequences, indexed by layer number.

    conv[l]: (S, conv_dim, K-1) and ssm[l]: (S, H, P, N) float32 for each Mamba layer l;
    k[l], v[l]: (S, kv_heads, max_len, head_dim) for each attention layer l; lengths: (S,) int64.
    The model's forward updates these in place when given a pool and the slots of its batch rows.
    """

    def __init__(self, config: NemotronHConfig, num_slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        c = config
        self.config, self.num_slots, self.max_len = c, num_slots, max_len
        self.dtype, self.device = dtype, torch.device(device)
        ssm_dtype = getattr(torch, c.mamba_ssm_cache_dtype)
        self.conv = {l: torch.zeros(num_slots, c.conv_dim, c.conv_kernel - 1, dtype=dtype, device=device)
                     for l in c.layers_of(MAMBA)}
        self.ssm = {l: torch.zeros(num_slots, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size,
                                   dtype=ssm_dtype, device=device)
                    for l in c.layers_of(MAMBA)}
        kv_shape = (num_slots, c.num_key_value_heads, max_len, c.head_dim)
        self.k = {l: torch.zeros(kv_shape, dtype=dtype, device=device) for l in c.layers_of(ATTENTION)}
        self.v = {l: torch.zeros(kv_shape, dtype=dtype, device=device) for l in c.layers_of(ATTENTION)}
        self.lengths = torch.zeros(num_slots, dtype=torch.long, device=device)

    def reset(self, slot: int) -> None:
        """Empty a slot so a new sequence can start in it."""
        for t in (*self.conv.values(), *self.ssm.values()):
            t[slot].zero_()
        # K/V beyond `lengths` are never read, so only the length needs clearing.
        self.lengths[slot] = 0

    def snapshot(self, slot: int) -> SlotState:
        """Copy out one slot's state."""
        n = int(self.lengths[slot])
        return SlotState(
            conv={l: t[slot].clone() for l, t in self.conv.items()},
            ssm={l: t[slot].clone() for l, t in self.ssm.items()},
            k={l: t[slot, :, :n].clone() for l, t in self.k.items()},
            v={l: t[slot, :, :n].clone() for l, t in self.v.items()},
            length=n,
        )

    def restore(self, slot: int, state: SlotState) -> None:
        """Overwrite one slot with a snapshot (possibly taken from another slot)."""
        if state.length > self.max_len:
            raise ValueError(f"snapshot has {state.length} tokens but the pool's max_len is {self.max_len}")
        for mine, theirs in ((self.conv, state.conv), (self.ssm, state.ssm)):
            for l, t in mine.items():
                t[slot].copy_(theirs[l])
        for mine, theirs in ((self.k, state.k), (self.v, state.v)):
            for l, t in mine.items():
                t[slot, :, :state.length].copy_(theirs[l])
        self.lengths[slot] = state.length

    def memory_bytes(self) -> int:
        """Bytes held by all state tensors."""
        tensors = [*self.conv.values(), *self.ssm.values(), *self.k.values(), *self.v.values()]
        return sum(t.numel() * t.element_size() for t in tensors)
