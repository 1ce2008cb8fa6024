"""Where rollout outcomes go: appended to the output, the failure sidecar and the trajectories as they arrive
(`FileSink`), or kept in memory for a trainer (`MemorySink`). Both count per agent."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from tqdm import tqdm

from rollout.dispatch import Outcome
from rollout.resume import key_of
from rollout.trajectory import TrajectoryError, to_trajectory

log = logging.getLogger(__name__)


@dataclass
class AgentTotals:
    """One agent's counts in a collection."""

    count: int = 0
    failures: int = 0
    reward_sum: float = 0.0
    not_persisted: int = 0
    resumed: int = 0

    @property
    def mean_reward(self) -> float:
        """Mean reward over successful rollouts (nan when there were none)."""
        return self.reward_sum / self.count if self.count else math.nan

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        if outcome.kind == "success":
            self.count += 1
            self.reward_sum += outcome.reward
        elif outcome.kind == "failure":
            self.failures += 1
        else:
            self.not_persisted += 1


class Totals:
    """Per-agent totals and their sum."""

    def __init__(self, agents: dict[str, AgentTotals] | None = None) -> None:
        self.agents: dict[str, AgentTotals] = agents if agents is not None else {}

    def of(self, agent: str) -> AgentTotals:
        """The totals of one agent (created empty)."""
        totals = self.agents.get(agent)
        if totals is None:
            totals = self.agents[agent] = AgentTotals()
        return totals

    def overall(self) -> AgentTotals:
        """Every agent together."""
        total = AgentTotals()
        for t in self.agents.values():
            total.count += t.count
            total.failures += t.failures
            total.reward_sum += t.reward_sum
            total.not_persisted += t.not_persisted
            total.resumed += t.resumed
        return total


class MemorySink:
    """Keeps results and failed attempts in memory, for a trainer collecting in-process."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.not_persisted = 0
        self.totals = Totals()

    def record(self, outcome: Outcome) -> None:
        """A finished rollout goes to `results`, a failed attempt to `failed`; a kill-shaped one is only counted."""
        self.totals.of(outcome.agent).add(outcome)
        if outcome.kind == "success":
            self.results.append(outcome.row)
        elif outcome.kind == "failure":
            self.failed.append(outcome.row)
        else:
            self.not_persisted += 1

    def skipped(self, agent: str, finished: bool) -> None:
        """Nothing is skipped without resume."""


class FileSink:
    """Appends each outcome to its file as it arrives (flushed, so a crash loses at most a partial last line)."""

    def __init__(self, out: BinaryIO, failed: BinaryIO, bar: tqdm, trajectories: BinaryIO | None = None) -> None:
        self.out, self.failed, self.bar, self.trajectories = out, failed, bar, trajectories
        self.totals = Totals()
        self.trajectory_errors = 0

    def record(self, outcome: Outcome) -> None:
        """A success to the output (and its trajectory), a failure to the sidecar, a kill-shaped one nowhere."""
        self.totals.of(outcome.agent).add(outcome)
        if outcome.kind == "success":
            self.out.write(orjson.dumps(outcome.row, option=orjson.OPT_APPEND_NEWLINE))
            self.out.flush()
            self._trajectory(outcome.row)
        elif outcome.kind == "failure":
            self.failed.write(orjson.dumps(outcome.row, option=orjson.OPT_APPEND_NEWLINE))
            self.failed.flush()
        self._tick()

    def skipped(self, agent: str, finished: bool) -> None:
        """A rollout not run again (resume): already finished, or given up on."""
        self.totals.of(agent).resumed += finished
        self.bar.update(1)

    def _trajectory(self, row: dict[str, Any]) -> None:
        """Write the rollout's trajectory; a rollout that is not token-exact stays in the output, unwritten here."""
        if self.trajectories is None:
            return
        try:
            trajectory = to_trajectory(row)
        except TrajectoryError as exc:
            self.trajectory_errors += 1
            log.warning("rollout %s has no training trajectory: %s", key_of(row), exc)
            return
        self.trajectories.write(orjson.dumps(trajectory.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
        self.trajectories.flush()

    def _tick(self) -> None:
        if self.bar.disable:
            return
        total = self.totals.overall()
        self.bar.set_postfix_str(f"mean_reward={total.mean_reward:.3f} failures={total.failures}", refresh=False)
        self.bar.update(1)
