"""One rollout and many: POST a row to its agent's /run and classify the answer; keep `concurrency` in flight.

`run_one` never raises for a rollout's own failure: every outcome (a reward, an HTTP error, a timeout, an
unreachable agent, a body without a reward, an agent-reported `_ng_failure_class`, a kill-shaped
`_ng_no_persist`) is an `Outcome` for a sink to record. `expand` turns task rows into rollouts (repeats, index
stamps, `agent_ref`, sampling settings), skipping those a resume does not need; `dispatch` runs them with a
bounded number in flight, pulling a row only once a slot is free, so memory follows concurrency, not the data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gym_core.client import get_client
from gym_core.protocol import is_reward
from rollout.backoff import UpstreamGate
from rollout.failures import failure_record
from rollout.resume import ResumeState
from rollout.routing import AgentRoutes, agent_ref, name_of
from rollout.sampling import SamplingOptions

STAMPS = ("_ng_task_index", "_ng_rollout_index", "agent_ref", "_ng_attempt_index")


@dataclass(slots=True)
class Outcome:
    """What became of one rollout: `success` (with its reward), `failure` (a typed error) or `unpersisted`."""

    kind: Literal["success", "failure", "unpersisted"]
    row: dict[str, Any]
    reward: float = 0.0

    @property
    def agent(self) -> str:
        """The agent the rollout ran on."""
        return self.row["agent_ref"]["name"]


class Sink(Protocol):
    """Where outcomes go as they complete: files (`collect`) or memory (`collect_in_memory`)."""

    def record(self, outcome: Outcome) -> None: ...
    def skipped(self, agent: str, finished: bool) -> None: ...


def stamps_of(row: dict[str, Any]) -> dict[str, Any]:
    """The collector's stamps on a row: task and rollout index, agent_ref, attempt."""
    return {k: row[k] for k in STAMPS if k in row}


def classify(row: dict[str, Any], result: Any) -> Outcome:
    """The outcome of a 2xx /run answer."""
    stamps = stamps_of(row)
    reward = result.get("reward") if isinstance(result, dict) else None
    if isinstance(result, dict) and result.get("_ng_no_persist"):
        return Outcome("unpersisted", stamps)  # kill-shaped: written nowhere, so a resume runs it again
    if isinstance(result, dict) and result.get("_ng_failure_class"):
        failure_class = str(result["_ng_failure_class"])
        message = str(result.get("error") or "the agent reported a failure")
        terminal = {"_ng_failure_terminal": True} if result.get("_ng_failure_terminal") else {}
        return Outcome("failure", {**stamps, "_ng_failure_class": failure_class, **terminal,
                                   "error": {"type": failure_class, "message": message}})
    if not is_reward(reward):
        message = f"/run answered without a numeric `reward`: {str(result)[:300]}"
        return Outcome("failure", {**stamps, "error": {"type": "invalid_response", "message": message}})
    return Outcome("success", {**result, **stamps}, float(reward))


async def run_one(agent: str, row: dict[str, Any], timeout: float, gate: UpstreamGate | None = None) -> Outcome:
    """One rollout on `agent` (a URL, or a registry name the client re-resolves after a restart); with a `gate`,
    held while an upstream is down (rollout/backoff.py). Every failure is a failure outcome with a typed error
    and, where it can be told, its class (rollout/failures.py)."""
    async def attempt() -> Any:
        return await get_client().post_json(agent, "/run", row, timeout=timeout)

    try:
        result = await (gate.call(attempt) if gate is not None else attempt())
    except Exception as exc:  # error statuses, timeouts, refused connections, bad JSON: this rollout's failure
        return Outcome("failure", {**stamps_of(row), **failure_record(exc)})
    return classify(row, result)


@dataclass(frozen=True)
class Expansion:
    """How task rows become rollouts."""

    num_repeats: int = 1
    default_agent: str = "agent"
    sampling: SamplingOptions = SamplingOptions()
    max_attempts: int = 1


def expand(rows: Iterable[dict[str, Any]], how: Expansion, state: ResumeState, sink: Sink) -> Iterator[dict[str, Any]]:
    """Each row `num_repeats` times in a row ("abc" -> "aabbcc"), stamped with its task and rollout index and its
    `agent_ref`, sampling applied; rollouts that need no new attempt (finished, terminal, out of attempts) are
    skipped."""
    for position, row in enumerate(rows):
        task_index = row.get("_ng_task_index", position)
        name = name_of(row, how.default_agent)
        ref = row["agent_ref"] if name_of(row, "") else agent_ref(name)
        for repeat in range(how.num_repeats):
            key = (name, task_index, repeat)
            if state.skip(key, how.max_attempts):
                sink.skipped(name, key in state.done)
                continue
            attempts = state.attempts.get(key, 0)
            params = row["responses_create_params"]
            if how.sampling.active:
                params = how.sampling.apply(params, task_index, repeat)
            yield {**row, "responses_create_params": params, "agent_ref": ref, "_ng_task_index": task_index,
                   "_ng_rollout_index": repeat, **({"_ng_attempt_index": attempts} if attempts else {})}


async def dispatch(routes: AgentRoutes, rollouts: Iterator[dict[str, Any]], sink: Sink, concurrency: int,
                   timeout: float) -> None:
    """At most `concurrency` rollouts in flight; a row is pulled only once a slot is free."""
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task] = set()
    gate = UpstreamGate()

    async def run_in_slot(target: str, row: dict[str, Any]) -> None:
        sink.record(await run_one(target, row, timeout, gate))

    try:
        for row in rollouts:
            await slots.acquire()
            task = asyncio.create_task(run_in_slot(await routes.target(row["agent_ref"]["name"]), row))
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), slots.release()))
        await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()

