"""The collector: POST task rows to their agents' /run, stream every rollout to JSONL as it completes.
(`collect_in_memory` is the same machinery without files, for a trainer collecting in-process.)

Each row goes to the agent its `agent_ref.name` names, else to the default agent (by name or URL;
rollout/routing.py); settings from `SamplingOptions` (temperature, top_p, max_output_tokens, a per-rollout seed)
are applied to its `responses_create_params` (rollout/sampling.py). Rows are read lazily and at most
`concurrency` rollouts exist at any time (rollout/dispatch.py), so memory is bounded by what is in flight, not by
the dataset. A rollout that fails (HTTP error, timeout, unreachable agent, a body without a reward, or an
agent-reported `_ng_failure_class`) goes to the `<stem>_failures.jsonl` sidecar with its error and class
(rollout/failures.py); it never becomes a reward of 0. While an upstream is down, rollouts are held, not failed
(rollout/backoff.py). A result the agent marks `_ng_no_persist` (kill-shaped) is written nowhere and only counted
(`not_persisted`), so a later resume runs it again, as in NeMo Gym.

Without `resume` both files start empty (the sidecar too, so no stale attempts leak into a later resume). With
`resume`, rollouts already in the output (keyed by agent, `_ng_task_index` and `_ng_rollout_index`) are skipped,
each sidecar row counts as a failed attempt, a rollout is retried until `max_attempts` (with `_ng_attempt_index`
set), and both files are appended to (rollout/resume.py). With `trajectories`, the training trajectory
(rollout/trajectory.py) of each successful rollout is written to that JSONL as it completes. At the end, each
agent's /aggregate_metrics over its rows of the output goes to `<stem>_aggregate_metrics.json`
(rollout/metrics.py). Counts and metrics are per agent and overall.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from tqdm import tqdm

from rollout.dispatch import Expansion, dispatch, expand
from rollout.metrics import MetricsReport, aggregate, format_key_metrics, metrics_path
from rollout.resume import DEFAULT_MAX_ATTEMPTS, KeySet, ResumeState, iter_jsonl, load_state, open_for_collection
from rollout.routing import AgentRoutes
from rollout.sampling import SamplingOptions
from rollout.sinks import AgentTotals, FileSink, MemorySink, Totals
from rollout.trajectory import TrajectoryError, to_trajectory

__all__ = ["CollectOptions", "CollectionSummary", "DataError", "MemorySink", "SamplingOptions", "collect",
           "collect_in_memory", "count_rows", "failures_path", "read_rows"]

DEFAULT_CONCURRENCY = 32
DEFAULT_TIMEOUT_S = 600.0


class DataError(ValueError):
    """A task file problem, reported as `file:line: what is wrong`."""


@dataclass(frozen=True)
class CollectOptions:
    """How to collect. `agent_name` names the default agent (default: the agent argument itself, or for a URL the
    name its /health reports); `agents` maps further agent names to URLs (others are looked up in the registry)."""

    agent_name: str | None = None
    agents: dict[str, str] = field(default_factory=dict)
    num_repeats: int = 1
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT_S
    total: int | None = None
    progress: bool = True
    resume: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    trajectories: Path | None = None
    aggregate_metrics: bool = True
    sampling: SamplingOptions = SamplingOptions()

    def __post_init__(self) -> None:
        if self.num_repeats < 1 or self.concurrency < 1 or self.timeout <= 0 or self.max_attempts < 1:
            raise ValueError("num_repeats, concurrency and max_attempts must be >= 1 and timeout > 0")

    @classmethod
    def of(cls, options: CollectOptions | None, **overrides: Any) -> CollectOptions:
        """`options` (or the defaults) with keyword overrides; an unknown keyword is a TypeError."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown collect option(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **overrides)


@dataclass
class CollectionSummary:
    """What a collection produced, overall and per agent."""

    agents: dict[str, AgentTotals]
    elapsed_s: float
    output: Path
    failures_output: Path
    gave_up: int = 0
    trajectory_errors: int = 0
    trajectories_output: Path | None = None
    metrics: list[dict[str, Any]] | None = None  # one `{agent_ref, agent_metrics, ...}` entry per agent
    metrics_errors: dict[str, str] = field(default_factory=dict)
    workers_lost: int = 0  # Ray workers that died during a sharded collection (rollout/ray_collect.py)
    workers_cpu_s: float | None = None  # CPU seconds the Ray workers used collecting (start-up not counted)

    @property
    def total(self) -> AgentTotals:
        """Every agent's counts together."""
        return Totals(self.agents).overall()

    @property
    def count(self) -> int:
        """Successful rollouts."""
        return self.total.count

    @property
    def failures(self) -> int:
        """Failed attempts (each in the sidecar)."""
        return self.total.failures

    @property
    def resumed(self) -> int:
        """Rollouts a resume found finished."""
        return self.total.resumed

    @property
    def not_persisted(self) -> int:
        """Kill-shaped results, written nowhere (a resume runs them again)."""
        return self.total.not_persisted

    @property
    def mean_reward(self) -> float:
        """Mean reward over successful rollouts (nan when there were none)."""
        return self.total.mean_reward

    @property
    def rollouts_per_s(self) -> float:
        """Successful and failed rollouts per second of wall time."""
        return (self.count + self.failures) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        """One metrics line for logs and the terminal (and one per agent when there were several)."""
        total = self.total
        text = _totals_text(total) + f" rollouts/s={self.rollouts_per_s:.2f} elapsed={self.elapsed_s:.1f}s"
        text += f" gave_up={self.gave_up}" if self.gave_up and not total.resumed else ""
        text += f" workers_lost={self.workers_lost}" if self.workers_lost else ""
        keys = f" {format_key_metrics(self.key_metrics)}" if self.key_metrics and len(self.agents) == 1 else ""
        if len(self.agents) <= 1:
            return text + keys
        per_agent = [f"  {name}: {_totals_text(t)} {format_key_metrics(self._keys_of(name))}".rstrip()
                     for name, t in self.agents.items()]
        return "\n".join([text, *per_agent])

    def _keys_of(self, agent: str) -> dict[str, Any]:
        for entry in self.metrics or []:
            if entry["agent_ref"]["name"] == agent and isinstance(entry.get("key_metrics"), dict):
                return entry["key_metrics"]
        return {}

    @property
    def key_metrics(self) -> dict[str, Any]:
        """The environments' key metrics (e.g. `pass@4/reward`); with several agents named `agent/metric`."""
        entries = self.metrics or []
        if len(entries) == 1:
            return dict(entries[0].get("key_metrics") or {})
        return {f"{e['agent_ref']['name']}/{k}": v for e in entries for k, v in (e.get("key_metrics") or {}).items()}

    @property
    def metrics_output(self) -> Path | None:
        """`<stem>_aggregate_metrics.json` when it was written."""
        return metrics_path(self.output) if self.metrics else None


def _totals_text(t: AgentTotals) -> str:
    text = f"rollouts={t.count} mean_reward={t.mean_reward:.4f} failures={t.failures}"
    text += f" resumed={t.resumed}" if t.resumed else ""
    return text + (f" not_persisted={t.not_persisted}" if t.not_persisted else "")


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


async def start_routes(agent: str, options: CollectOptions) -> AgentRoutes:
    """The agent routes of a collection, the default agent named (for a URL, by its /health when it says)."""
    routes = AgentRoutes(agent, options.agents, options.agent_name)
    await routes.name_default_agent()
    return routes


def prepare(output: Path, default_agent: str, options: CollectOptions) -> ResumeState:
    """Make the output's folder; with `resume`, what the files already hold."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if not options.resume:
        return ResumeState()
    try:
        return load_state(output, failures_path(output), default_agent)
    except ValueError as exc:
        raise DataError(str(exc)) from None


@contextlib.contextmanager
def open_sink(output: Path, options: CollectOptions) -> Iterator[FileSink]:
    """The output, sidecar and trajectory files (truncated, or appended to on resume) behind a progress bar."""
    total = None if options.total is None else options.total * options.num_repeats
    bar = tqdm(total=total, file=sys.stderr, disable=not options.progress, unit="rollout", dynamic_ncols=True)
    with contextlib.ExitStack() as files, bar:
        out = files.enter_context(open_for_collection(output, options.resume))
        failed = files.enter_context(open_for_collection(failures_path(output), options.resume))
        traj = (files.enter_context(_open_trajectories(options.trajectories, output, options.resume))
                if options.trajectories else None)
        yield FileSink(out, failed, bar, traj)


async def finish(routes: AgentRoutes, sink: FileSink, state: ResumeState, output: Path, options: CollectOptions,
                 started: float) -> CollectionSummary:
    """Aggregate each agent's metrics (unless disabled) and sum the collection up."""
    elapsed = time.perf_counter() - started
    report = (await aggregate(routes, output, routes.default_name, options.timeout)
              if options.aggregate_metrics else MetricsReport())
    return CollectionSummary(sink.totals.agents, elapsed, output, failures_path(output),
                             state.exhausted(options.max_attempts), sink.trajectory_errors, options.trajectories,
                             report.entries or None, report.errors)


async def collect(agent: str, rows: Iterable[dict[str, Any]], output: Path, *, options: CollectOptions | None = None,
                  **overrides: Any) -> CollectionSummary:
    """Run every row `num_repeats` times on its agent (`agent` by name or URL for rows without an `agent_ref`);
    write results as they complete; then each agent's metrics over the whole output. Options come as a
    `CollectOptions` and/or as its fields by keyword (`num_repeats=4, concurrency=64, ...`)."""
    options = CollectOptions.of(options, **overrides)
    routes = await start_routes(agent, options)
    state = prepare(output, routes.default_name, options)
    how = Expansion(options.num_repeats, routes.default_name, options.sampling, options.max_attempts)
    with open_sink(output, options) as sink:
        started = time.perf_counter()
        await dispatch(routes, expand(rows, how, state, sink), sink, options.concurrency, options.timeout)
    return await finish(routes, sink, state, output, options, started)


async def collect_in_memory(agent: str, rows: Iterable[dict[str, Any]], *, agent_name: str | None = None,
                            num_repeats: int = 1, concurrency: int = DEFAULT_CONCURRENCY,
                            timeout: float = DEFAULT_TIMEOUT_S,
                            sampling: SamplingOptions | None = None) -> MemorySink:
    """`collect` without files or resume: every row `num_repeats` times, results kept in completion order."""
    options = CollectOptions(agent_name=agent_name, num_repeats=num_repeats, concurrency=concurrency,
                             timeout=timeout, sampling=sampling or SamplingOptions())
    routes = await start_routes(agent, options)
    sink = MemorySink()
    how = Expansion(num_repeats, routes.default_name, options.sampling, 1)
    await dispatch(routes, expand(rows, how, ResumeState(), sink), sink, concurrency, timeout)
    return sink


def _open_trajectories(path: Path, output: Path, resume: bool) -> BinaryIO:
    """The trajectories file; when resuming, finished rollouts whose trajectory is missing get it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = open_for_collection(path, resume)
    if resume:
        written = KeySet()  # trajectories carry no agent: keyed by (task, repeat)
        for t in iter_jsonl(path):
            written.add(("", t.get("task_index"), t.get("repeat_index")))
        for row in iter_jsonl(output):
            if ("", row.get("_ng_task_index"), row.get("_ng_rollout_index")) not in written:
                with contextlib.suppress(TrajectoryError):
                    file.write(orjson.dumps(to_trajectory(row).to_dict(), option=orjson.OPT_APPEND_NEWLINE))
        file.flush()
    return file
