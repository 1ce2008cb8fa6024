"""Per-rollout state on a resources server: `Session` (the environment's `state` dict) and the bounded store."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Session", "SessionStore"]


@dataclass
class Session:
    """One rollout's state on this server; `state` is the environment's to fill."""

    id: str
    state: dict[str, Any] = field(default_factory=dict)
    last_used: float = field(default=0.0, repr=False)


class SessionStore:
    """In-memory sessions keyed by session id: idle ones expire after `ttl_s`, and at most `max_sessions` are kept.

    Past the cap the least recently used session is evicted. `stats()` counts both kinds of loss, so a server
    evicting sessions that rollouts still need says so in its /health.
    """

    def __init__(self, ttl_s: float, max_sessions: int = 65536, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._clock = clock
        # Ordered by last use, oldest first, so eviction stops at the first live session.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.created = self.expired = self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session:
        """The session for this id, created empty if it does not exist (or expired)."""
        session = self.find(session_id)
        if session is None:
            session = self._sessions[session_id] = Session(session_id, last_used=self._clock())
            self.created += 1
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
                self.evicted += 1
        return session

    def find(self, session_id: str) -> Session | None:
        """The live session for this id, renewed, or None (never created, expired, evicted or ended)."""
        now = self._expire(self._clock())
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
            session.last_used = now
        return session

    def reset(self, session_id: str) -> Session:
        """A fresh, empty session for this id, replacing any earlier one."""
        self._sessions.pop(session_id, None)
        return self.get(session_id)

    def pop(self, session_id: str) -> None:
        """Forget a session (a finished rollout)."""
        self._sessions.pop(session_id, None)

    def stats(self) -> dict[str, int]:
        """Live sessions, the cap, and how many were created, expired (idle) and evicted (over the cap)."""
        self._expire(self._clock())
        return {"live": len(self._sessions), "max": self.max_sessions, "created": self.created,
                "expired": self.expired, "evicted": self.evicted}

    def _expire(self, now: float) -> float:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used < self.ttl_s:
                break
            self._sessions.popitem(last=False)
            self.expired += 1
        return now
