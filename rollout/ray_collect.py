"""Sharded collection on Ray: `gym rollout --ray ADDRESS --workers N` runs the rollouts on N Ray workers.

Each worker (`CollectorWorker`, an async Ray actor) runs the same async rollout code as the local collector
(`rollout.dispatch.run_one`) against the same agents, with `concurrency / N` rollouts in flight. This process
stays the one reader of the input and the one writer of the output: it expands rows into rollouts (resume
skips included), hands them to the workers in small chunks, and writes each outcome with the local collector's
sink as the chunk comes back. So the output, the failure sidecar, the trajectories, the metrics and `--resume`
are exactly the local collector's, and memory here stays bounded by what is in flight.

Crash safety: an outcome is written once, by this process, when its chunk returns. A worker that dies loses only
its unreturned chunks; they are handed to the workers still alive (the rollouts run again; nothing was written
for them). If this process dies, its workers go with it (Ray stops the actors of a dead owner) and
`--resume` runs exactly the rollouts missing from the output. Either way every (task, repeat) ends up in the
output exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.collect import CollectionSummary, CollectOptions, finish, open_sink, prepare, start_routes
from rollout.dispatch import Expansion, Outcome, Sink, expand, run_one
from rollout.routing import AgentRoutes

log = logging.getLogger(__name__)

MAX_CHUNK = 16  # rollouts per hand-off: small enough that a chunk's slowest rollout holds up few others


class WorkersLost(RuntimeError):
    """Every Ray worker died; what was collected is on disk and `--resume` continues."""


class CollectorWorker:
    """A Ray actor running rollouts: `run(chunk)` POSTs each (agent URL, row) to /run, concurrently."""

    async def run(self, chunk: list[tuple[str, dict[str, Any]]], timeout: float) -> list[tuple[str, dict, float]]:
        """The outcomes of a chunk of rollouts, as (kind, row, reward)."""
        outcomes = await asyncio.gather(*(run_one(url, row, timeout) for url, row in chunk))
        return [(o.kind, o.row, o.reward) for o in outcomes]

    def pid(self) -> int:
        """This worker's process id (tests kill it)."""
        return os.getpid()

    def cpu_seconds(self) -> float:
        """CPU time this worker process has used (user + system)."""
        return time.process_time()


@dataclass
class _Worker:
    """A worker actor and the rollouts it holds."""

    actor: Any
    in_flight: int = 0
    alive: bool = True


class ShardedDispatch:
    """Hands rollouts to Ray workers in chunks, keeping each worker's in-flight count at its share of concurrency."""

    def __init__(self, actors: list[Any], routes: AgentRoutes, concurrency: int, timeout: float) -> None:
        self.workers = [_Worker(actor) for actor in actors]
        self.routes, self.timeout = routes, timeout
        self.share = max(1, concurrency // len(actors))
        self.chunk = max(1, min(MAX_CHUNK, self.share // 4))
        self.lost = 0
        self._retry: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()

    async def run(self, rollouts: Iterator[dict[str, Any]], sink: Sink) -> None:
        """Run every rollout on some worker; record each outcome in `sink` as its chunk returns."""
        pending: dict[asyncio.Future, tuple[_Worker, list[tuple[str, dict[str, Any]]]]] = {}
        exhausted = False
        while True:
            exhausted = await self._fill(rollouts, pending, exhausted)
            if not pending:
                return
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                worker, chunk = pending.pop(future)
                worker.in_flight -= len(chunk)
                self._collect(future, worker, chunk, sink)

    async def _fill(self, rollouts: Iterator[dict[str, Any]], pending: dict, exhausted: bool) -> bool:
        """Give every live worker chunks up to its share; True once the input is used up."""
        live = [w for w in self.workers if w.alive]
        if not live:
            raise WorkersLost(f"all {len(self.workers)} Ray workers died; what finished is in the output, "
                              "and --resume runs the rest")
        for worker in live:
            while worker.in_flight + self.chunk <= self.share or worker.in_flight == 0:
                chunk = await self._next_chunk(rollouts, exhausted)
                if not chunk:
                    return True
                future = asyncio.wrap_future(worker.actor.run.remote(chunk, self.timeout).future())
                pending[future] = (worker, chunk)
                worker.in_flight += len(chunk)
        return exhausted

    async def _next_chunk(self, rollouts: Iterator[dict[str, Any]], exhausted: bool) -> list[tuple[str, dict]]:
        chunk: list[tuple[str, dict[str, Any]]] = []
        while self._retry and len(chunk) < self.chunk:
            chunk.append(self._retry.popleft())
        while not exhausted and len(chunk) < self.chunk:
            row = next(rollouts, None)
            if row is None:
                break
            chunk.append((await self.routes.url(row["agent_ref"]["name"]), row))
        return chunk

    def _collect(self, future: asyncio.Future, worker: _Worker, chunk: list, sink: Sink) -> None:
        """Record a returned chunk; a dead worker's chunk goes back in the queue, for the workers still alive."""
        import ray

        try:
            outcomes = future.result()
        except ray.exceptions.RayActorError as exc:
            if worker.alive:
                worker.alive = False
                self.lost += 1
                log.warning("a Ray collector worker died (%s); its %d unfinished rollouts go to the others",
                            type(exc).__name__, len(chunk))
            self._retry.extend(chunk)
            return
        for kind, row, reward in outcomes:
            sink.record(Outcome(kind, row, reward))


async def _cpu_of(actors: list[Any]) -> float:
    """CPU seconds the live workers used, summed (a worker that does not answer counts 0)."""
    import ray

    total = 0.0
    for actor in actors:
        try:
            total += await asyncio.wait_for(asyncio.wrap_future(actor.cpu_seconds.remote().future()), 30)
        except (ray.exceptions.RayError, TimeoutError):
            continue
    return total


async def collect_on_ray(agent: str, rows: Iterable[dict[str, Any]], output: Path, *, workers: int,
                         address: str | None = None, options: CollectOptions | None = None,
                         **overrides: Any) -> CollectionSummary:
    """`rollout.collect.collect`, with the rollouts run by `workers` Ray workers (see the module docstring)."""
    import ray

    from gym_core.ray_launcher import connect

    if workers < 1:
        raise ValueError("workers must be >= 1")
    options = CollectOptions.of(options, **overrides)
    connected = connect(address)
    try:
        routes = await start_routes(agent, options)
        state = prepare(output, routes.default_name, options)
        how = Expansion(options.num_repeats, routes.default_name, options.sampling, options.max_attempts)
        share = max(1, options.concurrency // workers)
        actor_class = ray.remote(CollectorWorker)
        actors = [actor_class.options(name=f"gym-collector-{os.getpid()}-{i}", num_cpus=0, max_concurrency=share + 8,
                                      max_restarts=0).remote() for i in range(workers)]
        with open_sink(output, options) as sink:
            cpu_at_start = await _cpu_of(actors)  # also waits until every worker is up: start-up is not counted
            started = time.perf_counter()
            sharded = ShardedDispatch(actors, routes, options.concurrency, options.timeout)
            try:
                await sharded.run(expand(rows, how, state, sink), sink)
                workers_cpu = await _cpu_of([w.actor for w in sharded.workers if w.alive]) - cpu_at_start
            finally:
                for actor in actors:
                    ray.kill(actor)
        summary = await finish(routes, sink, state, output, options, started)
        summary.workers_lost, summary.workers_cpu_s = sharded.lost, workers_cpu
        return summary
    finally:
        if connected:
            ray.shutdown()
