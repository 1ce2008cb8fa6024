"""Requests that share one prefill: the `n` samples of one prompt.

Requests with the same `prefill_group` (and the same prompt) are admitted in order. The first one admitted
prefills the prompt; the others wait until its prompt is done, then start from a copy of its slot state and
next-token logits, so the prompt runs through the model once however many samples are drawn from it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch


class SharedPrefills:
    """The bookkeeping of prefill groups for one Engine (all calls on the engine's thread)."""

    def __init__(self) -> None:
        self._waiting: Counter[str] = Counter()  # group -> members not yet admitted
        self._leaders: dict[str, Any] = {}  # group -> the member prefilling the prompt for the others
        self._ready: dict[str, tuple[Any, torch.Tensor]] = {}  # group -> (slot state, next logits) after the prompt

    def added(self, group: str) -> None:
        """A member joined the waiting queue."""
        self._waiting[group] += 1

    def must_wait(self, group: str) -> bool:
        """Whether a member should stay queued because a sibling is still prefilling the prompt."""
        return group in self._leaders and group not in self._ready

    def admit(self, group: str, seq: Any) -> tuple[Any, torch.Tensor] | None:
        """A member takes a slot: the prompt's state to start from, or None (it prefills, for the others too)."""
        self._left_queue(group)
        ready = self._ready.get(group)
        if ready is None and self._waiting[group] > 0:
            self._leaders[group] = seq
        if not self._waiting[group]:
            self._forget_ready(group)
        return ready

    def prefilled(self, group: str, seq: Any, snapshot: Any) -> None:
        """`seq` finished the prompt: if it leads, keep `snapshot()` (state, logits) for the waiting members."""
        if self._leaders.get(group) is seq:
            del self._leaders[group]
            if self._waiting[group]:
                self._ready[group] = snapshot()

    def aborted(self, group: str, seq: Any | None) -> None:
        """A member left: a running `seq` (it may be the leader), or a waiting one (`seq` None)."""
        if seq is None:
            self._left_queue(group)
            if not self._waiting[group]:
                self._forget_ready(group)
        elif self._leaders.get(group) is seq:
            del self._leaders[group]  # the next member admitted prefills instead

    def drop_states(self) -> None:
        """Forget the prompt states (new weights): waiting members prefill again, the first one for the rest."""
        self._ready.clear()

    def clear(self) -> None:
        """Forget everything (every request was aborted)."""
        self._waiting.clear()
        self._leaders.clear()
        self._ready.clear()

    def _left_queue(self, group: str) -> None:
        self._waiting[group] -= 1
        if self._waiting[group] <= 0:
            del self._waiting[group]

    def _forget_ready(self, group: str) -> None:
        self._ready.pop(group, None)
