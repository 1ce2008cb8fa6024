"""Snapshots of finished sequences' inference state, keyed by the tokens they hold, for multi-turn reuse.

A Mamba state summarises a whole prefix and cannot be rewound, so a snapshot is only usable at the exact
end of the sequence it was taken from: a new prompt reuses the longest stored sequence that is a prefix
of it and prefills only the rest. Snapshots also keep the logits that followed their last token, so a
prompt equal to a stored sequence needs no forward pass at all.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


def state_nbytes(obj: Any) -> int:
    """Total bytes of the tensors inside a (nested) snapshot object."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(state_nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


@dataclass
class Snapshot:
    """One stored sequence: its token ids, the pool's SlotState, and the next-token logits (V,)."""

    tokens: tuple[int, ...]
    state: Any
    next_logits: torch.Tensor
    nbytes: int


class PrefixCache:
    """An LRU of snapshots bounded by count and bytes."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 2 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: list[int], state: Any, next_logits: torch.Tensor) -> None:
        """Store a snapshot of a sequence that holds exactly `tokens`; evict the least recently used."""
        key = tuple(tokens)
        snap = Snapshot(key, state, next_logits, state_nbytes(state) + state_nbytes(next_logits))
        if not key or snap.nbytes > self.max_bytes or self.max_entries == 0:
            return
        if key in self._entries:
            self.nbytes -= self._entries.pop(key).nbytes
        self._entries[key] = snap
        self.nbytes += snap.nbytes
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes

    def clear(self) -> None:
        """Drop every snapshot (the weights they were computed with changed)."""
        self._entries.clear()
        self.nbytes = 0

    def longest_prefix(self, prompt: list[int]) -> Snapshot | None:
        """The longest stored sequence that is a prefix of `prompt` (or equal to it), marked recently used."""
        best = None
        for key, snap in self._entries.items():
            n = len(key)
            longer = best is None or n > len(best.tokens)
            # The last-token test rejects most keys before the O(n) comparison.
            if longer and n <= len(prompt) and prompt[n - 1] == key[-1] and tuple(prompt[:n]) == key:
                best = snap
        if best is not None:
            self._entries.move_to_end(best.tokens)
        return best
