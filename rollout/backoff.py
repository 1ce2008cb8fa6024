"""Hold rollouts back while an upstream is down, instead of spending their attempts against dead servers.

A killed policy (or agent, or resources server) is restarted by the launcher within seconds; without this, a
collector at full concurrency failed every rollout it had in flight or started meanwhile, 1,373 attempts in
3 s (issue 10, finding 6). `UpstreamGate.call` runs one /run attempt; when it fails as an outage
(rollout/failures.py: `is_outage`) the gate closes: that rollout and every other one wait, and one at a time a
waiting rollout probes again after a growing pause (1 s, 2 s, ... at most 30 s), so a dead stack sees a
trickle, not a flood. The first success opens the gate for all. An outage longer than `give_up_after_s`
ends the waiting: the held rollouts fail with their class and stay resumable (`gym rollout --resume`).

An agent that has never answered in this collection is a wrong address or a stack that is not up: refused
connections to it fail at once. Once it answered (a result, or an error status of its own), its outages and
those of the servers behind it are waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gym_core.client import ServerError
from rollout.failures import is_outage

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait for an upstream that went down."""

    first_wait_s: float = 1.0
    max_wait_s: float = 30.0
    give_up_after_s: float = 600.0  # then the held rollouts fail (resumable), and the collection goes on


class UpstreamGate:
    """Runs attempts; while an upstream is down, holds them and lets one probe at a time (see module doc)."""

    def __init__(self, policy: BackoffPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BackoffPolicy()
        self._clock = clock
        self._answered = False  # whether the agent ever answered: before that, a refused connection is no outage
        self._down_since: float | None = None
        self._gave_up_logged = False
        self._wait_s = self.policy.first_wait_s
        self._probe = asyncio.Lock()  # FIFO: waiting rollouts probe in turn
        self.outages = 0  # how many times the gate closed (for the summary and the tests)
        self.held = 0  # attempts that waited instead of failing

    @property
    def down(self) -> bool:
        """Whether the gate is holding attempts now."""
        return self._down_since is not None

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`await attempt()`, waiting out outages (bounded); any other failure is raised as it is."""
        while True:
            if self._down_since is None or self._given_up():
                started = self._clock()
                try:
                    return self._opened(await attempt(), started)
                except Exception as exc:
                    if self._given_up() or not self._outage(exc):
                        raise
                    continue
            async with self._probe:
                if self._down_since is None or self._given_up():
                    continue  # an earlier probe found it back, or the wait is over
                await asyncio.sleep(self._wait_s)
                started = self._clock()
                try:
                    return self._opened(await attempt(), started)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    self.held += 1
                    self._still_down(exc)

    def _given_up(self) -> bool:
        if self._down_since is None or self._clock() - self._down_since <= self.policy.give_up_after_s:
            return False
        if not self._gave_up_logged:
            self._gave_up_logged = True
            log.error("upstream unreachable for more than give_up_after_s=%.0f s: held rollouts now fail with "
                      "their class; rerun with --resume once it is back", self.policy.give_up_after_s)
        return True

    def _opened(self, result: T, started: float) -> T:
        """A success; one from an attempt started after the outage began proves the upstream is back."""
        self._answered = True
        if self._down_since is not None and started >= self._down_since:
            log.warning("upstream reachable again after %.1f s; resuming rollouts", self._clock() - self._down_since)
            self._down_since, self._wait_s, self._gave_up_logged = None, self.policy.first_wait_s, False
        return result

    def _outage(self, exc: Exception) -> bool:
        """Close the gate on an outage of an upstream that answered before; False: `exc` is a plain failure."""
        if isinstance(exc, ServerError):
            self._answered = True  # the agent answered (its policy or resources server did not): the address is right
        if not (self._answered and is_outage(exc)):
            return False
        self.held += 1
        if self._down_since is None:
            self._down_since, self._wait_s = self._clock(), self.policy.first_wait_s
            self.outages += 1
            log.warning("upstream unreachable (%s); holding rollouts and retrying one at a time, first in %.0f s; "
                        "giving up after %.0f s", _brief(exc), self._wait_s, self.policy.give_up_after_s)
        return True

    def _still_down(self, exc: Exception) -> None:
        assert self._down_since is not None
        self._wait_s = min(self._wait_s * 2, self.policy.max_wait_s)
        log.warning("upstream still unreachable after %.0f s (%s); next try in %.0f s",
                    self._clock() - self._down_since, _brief(exc), self._wait_s)


def _brief(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:300]
