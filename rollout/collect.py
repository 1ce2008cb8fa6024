"""A first simple collector: POST task rows to an agent's /run, stream every rollout to JSONL as it completes.
(`collect_in_memory` is the same machinery without files, for a trainer collecting in-process.)

Rows are read lazily and at most `concurrency` rollouts exist at any time (a semaphore is taken *before*
each task is created), so memory is bounded by what is in flight, not by the dataset. A rollout that fails
(HTTP error, timeout, unreachable agent, a body without a reward, or an agent-reported `_ng_failure_class`)
goes to the `<stem>_failures.jsonl` sidecar with its error and class (rollout/failures.py); it never becomes a
reward of 0. While an upstream is down, rollouts are held, not failed (rollout/backoff.py). A result the agent
marks `_ng_no_persist` (kill-shaped: SIGTERM, OOM, actor death) is written nowhere and only counted
(`not_persisted`), so a later resume runs it again, as in NeMo Gym.

Without `resume` both files start empty (the sidecar too, so no stale attempts leak into a later resume). With
`resume`, rollouts already in the output (keyed by `(_ng_task_index, _ng_rollout_index)`) are skipped, each
sidecar row counts as a failed attempt, a rollout is retried until `max_attempts` (with `_ng_attempt_index`
set), and both files are appended to (see rollout/resume.py). With `trajectories`, the training trajectory
(rollout/trajectory.py) of each successful rollout is written to that JSONL as it completes. At the end, the
agent's /aggregate_metrics over every row of the output goes to `<stem>_aggregate_metrics.json` (rollout/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
from tqdm import tqdm

from gym_core.client import get_client
from gym_core.protocol import is_reward
from rollout.backoff import BackoffPolicy, UpstreamGate
from rollout.failures import failure_record
from rollout.metrics import aggregate, format_key_metrics, metrics_path
from rollout.resume import DEFAULT_MAX_ATTEMPTS, ResumeState, iter_jsonl, key_of, load_state, open_for_collection
from rollout.trajectory import TrajectoryError, to_trajectory

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 32
DEFAULT_TIMEOUT_S = 600.0


class DataError(ValueError):
    """A task file problem, reported as `file:line: what is wrong`."""


@dataclass
class CollectionSummary:
    """What a collection produced."""

    count: int
    failures: int
    reward_sum: float
    elapsed_s: float
    output: Path
    failures_output: Path
    resumed: int = 0
    gave_up: int = 0
    trajectory_errors: int = 0
    trajectories_output: Path | None = None
    metrics: dict[str, Any] | None = None
    not_persisted: int = 0

    @property
    def mean_reward(self) -> float:
        """Mean reward over successful rollouts (nan when there were none)."""
        return self.reward_sum / self.count if self.count else math.nan

    @property
    def rollouts_per_s(self) -> float:
        """Successful and failed rollouts per second of wall time."""
        return (self.count + self.failures) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        """One metrics line for logs and the terminal."""
        resumed = f" resumed={self.resumed} gave_up={self.gave_up}" if self.resumed or self.gave_up else ""
        resumed += f" not_persisted={self.not_persisted}" if self.not_persisted else ""
        keys = f" {format_key_metrics(self.key_metrics)}" if self.key_metrics else ""
        return (f"rollouts={self.count} mean_reward={self.mean_reward:.4f} failures={self.failures} "
                f"rollouts/s={self.rollouts_per_s:.2f} elapsed={self.elapsed_s:.1f}s{resumed}{keys}")

    @property
    def key_metrics(self) -> dict[str, Any]:
        """The environment's key metrics (e.g. `pass@4/reward`), empty when aggregation was skipped."""
        keys = (self.metrics or {}).get("key_metrics")
        return keys if isinstance(keys, dict) else {}

    @property
    def metrics_output(self) -> Path | None:
        """`<stem>_aggregate_metrics.json` when it was written."""
        return metrics_path(self.output) if self.metrics is not None else None


def failures_path(output: Path) -> Path:
    """`out/rollouts.jsonl` -> `out/rollouts_failures.jsonl`."""
    return output.with_name(f"{output.stem}_failures.jsonl")


def read_rows(path: Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Task rows from a JSONL file, lazily; blank lines are skipped, a malformed line raises DataError."""
    taken = 0
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and taken >= limit:
                return
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("responses_create_params"), dict):
                raise DataError(f"{path}:{number}: a task row is a JSON object with a "
                                "`responses_create_params` object (NeMo Gym format)")
            taken += 1
            yield row


def count_rows(path: Path, limit: int | None = None) -> int:
    """Number of non-blank lines (capped at `limit`), for the progress bar; nothing is parsed."""
    with open(path, "rb") as lines:
        total = sum(1 for line in lines if line.strip())
    return total if limit is None else min(total, limit)


async def collect(
    agent_url: str,
    rows: Iterable[dict[str, Any]],
    output: Path,
    *,
    agent_name: str,
    num_repeats: int = 1,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT_S,
    total: int | None = None,
    progress: bool = True,
    resume: bool = False,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    trajectories: Path | None = None,
    aggregate_metrics: bool = True,
    backoff: BackoffPolicy | None = None,
) -> CollectionSummary:
    """Run every row `num_repeats` times against the agent at `agent_url`; write results as they complete;
    then (unless `aggregate_metrics` is False) the agent's metrics over the whole output (rollout/metrics.py)."""
    if num_repeats < 1 or concurrency < 1 or timeout <= 0 or max_attempts < 1:
        raise ValueError("num_repeats, concurrency and max_attempts must be >= 1 and timeout > 0")
    output.parent.mkdir(parents=True, exist_ok=True)
    sidecar = failures_path(output)
    try:
        state = load_state(output, sidecar) if resume else ResumeState()
    except ValueError as exc:
        raise DataError(str(exc)) from None
    bar = tqdm(total=None if total is None else total * num_repeats, file=sys.stderr, disable=not progress,
               unit="rollout", dynamic_ncols=True)
    with contextlib.ExitStack() as files, bar:
        out = files.enter_context(open_for_collection(output, resume))
        failed = files.enter_context(open_for_collection(sidecar, resume))
        traj = files.enter_context(_open_trajectories(trajectories, output, resume)) if trajectories else None
        sink = _Sink(out, failed, bar, traj)
        started = time.perf_counter()
        todo = _expand(rows, num_repeats, agent_name, state, max_attempts, sink)
        await _dispatch(agent_url, todo, sink, concurrency, timeout, UpstreamGate(backoff))
    metrics = await aggregate(agent_url, output, agent_name, timeout) if aggregate_metrics else None
    return CollectionSummary(sink.count, sink.failures, sink.reward_sum, time.perf_counter() - started,
                             output, sidecar, sink.resumed, state.exhausted(max_attempts), sink.trajectory_errors,
                             trajectories, metrics, sink.not_persisted)


class Sink(Protocol):
    """Where results go as they complete: files (`collect`) or memory (`collect_in_memory`)."""

    def success(self, row: dict[str, Any], reward: float) -> None: ...
    def failure(self, row: dict[str, Any]) -> None: ...
    def unpersisted(self, row: dict[str, Any]) -> None: ...
    def skipped(self, finished: bool) -> None: ...


class MemorySink:
    """Keeps results and failed attempts in memory, for a trainer collecting in-process."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.not_persisted = 0

    def success(self, row: dict[str, Any], reward: float) -> None:
        """A finished rollout (its row, stamped with task and rollout index)."""
        self.results.append(row)

    def failure(self, row: dict[str, Any]) -> None:
        """A failed attempt, with its typed error."""
        self.failed.append(row)

    def unpersisted(self, row: dict[str, Any]) -> None:
        """A kill-shaped result (`_ng_no_persist`): only counted."""
        self.not_persisted += 1

    def skipped(self, finished: bool) -> None:
        """Nothing is skipped without resume."""


async def collect_in_memory(agent_url: str, rows: Iterable[dict[str, Any]], *, agent_name: str,
                            num_repeats: int = 1, concurrency: int = DEFAULT_CONCURRENCY,
                            timeout: float = DEFAULT_TIMEOUT_S, backoff: BackoffPolicy | None = None) -> MemorySink:
    """`collect` without files or resume: every row `num_repeats` times, results kept in completion order."""
    if num_repeats < 1 or concurrency < 1 or timeout <= 0:
        raise ValueError("num_repeats and concurrency must be >= 1 and timeout > 0")
    sink = MemorySink()
    todo = _expand(rows, num_repeats, agent_name, ResumeState(), 1, sink)
    await _dispatch(agent_url, todo, sink, concurrency, timeout, UpstreamGate(backoff))
    return sink


async def _dispatch(agent_url: str, rows: Iterator[dict[str, Any]], sink: Sink, concurrency: int,
                    timeout: float, gate: UpstreamGate) -> None:
    """At most `concurrency` rollouts in flight; a row is pulled only once a slot is free."""
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task] = set()
    try:
        for row in rows:
            await slots.acquire()
            task = asyncio.create_task(_run_one(agent_url, row, timeout, sink, gate))
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), slots.release()))
        await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()


def _open_trajectories(path: Path, output: Path, resume: bool) -> BinaryIO:
    """The trajectories file; when resuming, finished rollouts whose trajectory is missing get it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = open_for_collection(path, resume)
    if resume:
        written = {(t.get("task_index"), t.get("repeat_index")) for t in iter_jsonl(path)}
        for row in iter_jsonl(output):
            if key_of(row) not in written:
                with contextlib.suppress(TrajectoryError):
                    file.write(orjson.dumps(to_trajectory(row).to_dict(), option=orjson.OPT_APPEND_NEWLINE))
        file.flush()
    return file


def _expand(rows: Iterable[dict[str, Any]], num_repeats: int, agent_name: str, state: ResumeState,
            max_attempts: int, sink: Sink) -> Iterator[dict[str, Any]]:
    """Each row `num_repeats` times in a row ("abc" -> "aabbcc"), stamped with its task and rollout index;
    rollouts that need no new attempt (finished, terminal, out of attempts) are skipped."""
    agent_ref = {"type": "responses_api_agents", "name": agent_name}
    for position, row in enumerate(rows):
        task_index = row.get("_ng_task_index", position)
        for repeat in range(num_repeats):
            key = (task_index, repeat)
            if state.skip(key, max_attempts):
                sink.skipped(key in state.done)
                continue
            attempt = {"_ng_attempt_index": state.attempts[key]} if state.attempts[key] else {}
            yield {**row, "agent_ref": row.get("agent_ref", agent_ref),
                   "_ng_task_index": task_index, "_ng_rollout_index": repeat, **attempt}


async def _run_one(agent_url: str, row: dict[str, Any], timeout: float, sink: Sink, gate: UpstreamGate) -> None:
    """One rollout (held while an upstream is down); every failure ends in the sidecar with a typed error."""
    stamps = {k: row[k] for k in ("_ng_task_index", "_ng_rollout_index", "agent_ref", "_ng_attempt_index")
              if k in row}
    try:
        result = await gate.call(lambda: get_client().post_json(agent_url, "/run", row, timeout=timeout))
    except Exception as exc:  # error statuses, timeouts, refused connections, bad JSON: this rollout's failure
        sink.failure({**stamps, **failure_record(exc)})
        return
    reward = result.get("reward") if isinstance(result, dict) else None
    if isinstance(result, dict) and result.get("_ng_no_persist"):
        sink.unpersisted(stamps)  # kill-shaped: written nowhere, so a resume runs it again
    elif isinstance(result, dict) and result.get("_ng_failure_class"):
        failure_class = str(result["_ng_failure_class"])
        message = str(result.get("error") or "the agent reported a failure")
        terminal = {"_ng_failure_terminal": True} if result.get("_ng_failure_terminal") else {}
        sink.failure({**stamps, "_ng_failure_class": failure_class, **terminal,
                      "error": {"type": failure_class, "message": message}})
    elif not is_reward(reward):
        sink.failure({**stamps, "error": {"type": "invalid_response",
                                          "message": f"/run answered without a numeric `reward`: {str(result)[:300]}"}})
    else:
        sink.success({**result, **stamps}, float(reward))


class _Sink:
    """Appends results to the output, the failure sidecar and the trajectories as they arrive; keeps totals."""

    def __init__(self, out: BinaryIO, failed: BinaryIO, bar: tqdm, trajectories: BinaryIO | None = None) -> None:
        self.out, self.failed, self.bar, self.trajectories = out, failed, bar, trajectories
        self.count = self.failures = self.resumed = self.trajectory_errors = self.not_persisted = 0
        self.reward_sum = 0.0

    def success(self, row: dict[str, Any], reward: float) -> None:
        """A finished rollout: its row, then (when asked for) its trajectory."""
        self.out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self.out.flush()
        self._trajectory(row)
        self.count += 1
        self.reward_sum += reward
        self._tick()

    def failure(self, row: dict[str, Any]) -> None:
        """A failed attempt, to the sidecar."""
        self.failed.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self.failed.flush()
        self.failures += 1
        self._tick()

    def unpersisted(self, row: dict[str, Any]) -> None:
        """A kill-shaped result (`_ng_no_persist`): in neither file, so `--resume` re-dispatches it."""
        self.not_persisted += 1
        self._tick()

    def skipped(self, finished: bool) -> None:
        """A rollout not run again (resume): already finished, or given up on."""
        self.resumed += finished
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
        mean = self.reward_sum / self.count if self.count else math.nan
        self.bar.set_postfix_str(f"mean_reward={mean:.3f} failures={self.failures}", refresh=False)
        self.bar.update(1)
