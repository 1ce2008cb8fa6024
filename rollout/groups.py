"""Stream each task's group of rollouts to an asynchronous trainer as soon as its last repeat finishes.

```python
async for group in stream_groups("agent", rows, num_repeats=8, concurrency=64):
    fresh = [r.result for r in group.rollouts if r.ok and r.model_version in recent_versions]
    train_on(fresh)     # stale or failed rollouts dropped; group.failed says why the others failed
```

Groups arrive in completion order, not input order. Each rollout carries the `model_version` of the weights that
produced it: the version on the first model call of the episode (the agent tags every call's closing output item
with the policy's `X-Model-Version`; the version in `response.metadata` is the fallback), i.e. the oldest weights
any of its tokens came from, which is what bounds staleness. A failed rollout (HTTP error, timeout, no reward, an
agent-reported failure) stays in its group with `ok=False`, `result=None` and its typed `error`: it is never a
reward of 0 and never retried here.

Memory is O(concurrency + groups in progress): rows are read lazily, at most `concurrency` rollouts are in flight
or waiting to hand over a finished group, and at most `max_ready` finished groups wait for the consumer. A
consumer that stops reading stops the dispatch; leaving the `async for` early cancels what is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from gym_core.client import get_client
from rollout.collect import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S
from rollout.dispatch import run_one

_DONE = object()


@dataclass
class Rollout:
    """One finished rollout of a group: its /run result, or the error that ended it."""

    task_index: Any
    repeat_index: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None = None
    model_versions: list[str] = field(default_factory=list)  # one per model call that carried a version, in order

    @property
    def ok(self) -> bool:
        """Whether the rollout finished with a reward."""
        return self.result is not None

    @property
    def model_version(self) -> str | None:
        """The weights' version of the episode's first model call: the oldest any of its tokens came from."""
        return self.model_versions[0] if self.model_versions else None


@dataclass
class RolloutGroup:
    """Every repeat of one task, in repeat order, once the last of them finished."""

    task_index: Any
    row: dict[str, Any]
    rollouts: list[Rollout]

    @property
    def results(self) -> list[dict[str, Any]]:
        """The successful /run results, in repeat order."""
        return [r.result for r in self.rollouts if r.result is not None]

    @property
    def failed(self) -> list[Rollout]:
        """The rollouts that ended in an error."""
        return [r for r in self.rollouts if not r.ok]

    @property
    def model_versions(self) -> set[str]:
        """Every weights version that produced a token of this group."""
        return {v for r in self.rollouts for v in r.model_versions}


@dataclass(frozen=True)
class StreamOptions:
    """How `stream_groups` dispatches: repeats per task, rollouts in flight, per-rollout timeout, buffered groups."""

    num_repeats: int
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT_S
    max_ready: int = 4
    agent_name: str | None = None


def model_versions(result: dict[str, Any]) -> list[str]:
    """The version of each model call of a /run result, in call order (see the module docstring)."""
    response = result.get("response") if isinstance(result.get("response"), dict) else {}
    output = response.get("output") if isinstance(response.get("output"), list) else []
    tagged = [item["model_version"] for item in output
              if isinstance(item, dict) and isinstance(item.get("model_version"), str)]
    if tagged:
        return tagged
    metadata = response.get("metadata") if isinstance(response.get("metadata"), dict) else {}
    version = metadata.get("model_version")
    return [version] if isinstance(version, str) else []


async def stream_groups(agent: str, rows: Iterable[dict[str, Any]], *, num_repeats: int,
                        concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT_S,
                        max_ready: int = 4, agent_name: str | None = None) -> AsyncIterator[RolloutGroup]:
    """Run every row `num_repeats` times against `agent` (a URL or a registered name); yield each task's group
    as soon as its last repeat finishes."""
    options = StreamOptions(num_repeats, concurrency, timeout, max_ready, agent_name)
    if num_repeats < 1 or concurrency < 1 or timeout <= 0 or max_ready < 1:
        raise ValueError("num_repeats, concurrency and max_ready must be >= 1 and timeout > 0")
    url = await get_client().url_of(agent)
    name = agent_name or ("agent" if agent.startswith(("http://", "https://")) else agent)
    ready: asyncio.Queue = asyncio.Queue(maxsize=max_ready)
    producer = asyncio.create_task(_produce(url, name, rows, options, ready))
    try:
        while (group := await ready.get()) is not _DONE:
            yield group
        await producer  # surfaces an error raised while reading the rows
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


class _PendingGroup:
    """A group whose repeats are still running."""

    def __init__(self, task_index: Any, row: dict[str, Any], size: int) -> None:
        self.task_index, self.row, self.size = task_index, row, size
        self.done: list[Rollout] = []

    def add(self, rollout: Rollout) -> RolloutGroup | None:
        """Record one finished rollout; the whole group once it is the last."""
        self.done.append(rollout)
        if len(self.done) < self.size:
            return None
        return RolloutGroup(self.task_index, self.row, sorted(self.done, key=lambda r: r.repeat_index))


async def _produce(url: str, name: str, rows: Iterable[dict[str, Any]], options: StreamOptions,
                   ready: asyncio.Queue) -> None:
    """Dispatch rollouts in input order, a slot taken before each; hand finished groups to `ready`."""
    slots = asyncio.Semaphore(options.concurrency)
    running: set[asyncio.Task] = set()
    agent_ref = {"type": "responses_api_agents", "name": name}
    try:
        for position, row in enumerate(rows):
            task_index = row.get("_ng_task_index", position)
            group = _PendingGroup(task_index, row, options.num_repeats)
            for repeat in range(options.num_repeats):
                await slots.acquire()
                stamped = {**row, "agent_ref": row.get("agent_ref", agent_ref), "_ng_task_index": task_index,
                           "_ng_rollout_index": repeat}
                task = asyncio.create_task(_run_and_hand_over(url, stamped, group, options.timeout, ready, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        await asyncio.gather(*running)
        await ready.put(_DONE)
    finally:
        for task in running:
            task.cancel()


async def _run_and_hand_over(url: str, row: dict[str, Any], group: _PendingGroup, timeout: float,
                             ready: asyncio.Queue, slots: asyncio.Semaphore) -> None:
    """One rollout; the slot is kept until a finished group is handed over, so a slow consumer stops dispatch."""
    try:
        finished = group.add(await run_rollout(url, row, timeout))
        if finished is not None:
            await ready.put(finished)
    finally:
        slots.release()


async def run_rollout(url: str, row: dict[str, Any], timeout: float) -> Rollout:
    """One stamped row on the agent's /run (rollout.dispatch classifies every outcome) as a Rollout."""
    outcome = await run_one(url, row, timeout)
    task, repeat = row["_ng_task_index"], row["_ng_rollout_index"]
    if outcome.kind == "success":
        return Rollout(task, repeat, outcome.row, None, model_versions(outcome.row))
    error = outcome.row.get("error") or {"type": "kill_shaped", "message": "the agent reported a kill-shaped "
                                                                          "failure (_ng_no_persist)"}
    return Rollout(task, repeat, None, error)
