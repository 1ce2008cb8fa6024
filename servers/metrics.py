"""Metrics over finished rollouts, computed incrementally: NeMo-Gym-shaped means, per-task groups and pass@k.

`MetricsAccumulator.add(row)` takes one verify response at a time and keeps only numbers in flat columns (per
task: a count and a sum per numeric field; per reward: its task slot, rollout index and value), so a million
rows cost tens of MB, not the rows themselves. `result()` gives `{"agent_metrics", "key_metrics",
"group_level_metrics"}` exactly as `aggregate_metrics(rows)` does over a list.

pass@k is computed in O(rows) in total: the binary estimator 1 - C(n-c, k) / C(n, k) is a running product over
k (no big-integer binomials: one task repeated 16,000 times takes milliseconds), the graded one a running max.

`MetricsRuns` holds the accumulators of multi-part requests (`POST /aggregate_metrics` as NDJSON parts, see
servers/resources.py): a bounded number, each forgotten after a while unused.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["MetricsAccumulator", "MetricsInputError", "MetricsRuns", "RowsAccumulator", "aggregate_metrics",
           "key_metric_names", "pass_at_k"]


class MetricsInputError(ValueError):
    """A verify response that metrics cannot use; the message names the field."""


class Accumulator(Protocol):
    """Anything that takes rows one at a time and gives metrics at the end."""

    count: int

    def add(self, row: Any) -> None: ...
    def result(self) -> dict[str, Any]: ...


def _task_key(row: dict[str, Any], field: str, allow_str: bool) -> Any:
    """The row's `_ng_task_index` / `_ng_rollout_index`; anything but an integer (or a string) there is an error."""
    value = row.get(field)
    if value is None or (allow_str and isinstance(value, str)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise MetricsInputError(f"{field}: expected an integer{' or a string' if allow_str else ''}, "
                            f"got {type(value).__name__}")


def _numbers(row: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """Every top-level numeric field and `response.usage` count (bools as 0/1; `_ng_*` skipped)."""
    response = row.get("response")
    usage = response.get("usage") if isinstance(response, dict) else None
    merged = {**usage, **row} if isinstance(usage, dict) else row
    for key, value in merged.items():
        if isinstance(value, (int, float)) and not key.startswith("_ng_"):
            yield key, float(value)


def _zeros(typecode: str, n: int) -> array:
    return array(typecode, bytes(8 * n))


class MetricsAccumulator:
    """Running metrics over verify responses, fed one row at a time (see the module docstring)."""

    def __init__(self) -> None:
        self.count = 0
        self._sums: dict[str, float] = {}
        self._ns: dict[str, int] = {}
        self._slots: dict[Any, int] = {}  # task index -> slot, in first-seen order
        self._indexed = bytearray()  # 1 where the slot is a real `_ng_task_index` (a row without one is its own)
        self._task_keys: list[Any] = []
        self._task_counts = array("q")
        self._task_sums: dict[str, array] = {}
        self._task_ns: dict[str, array] = {}
        self._reward_slot = array("q")
        self._reward_order = array("q")
        self._rewards = array("d")
        self._binary = True

    def add(self, row: Any) -> None:
        """Fold one verify response in; raises MetricsInputError for a row metrics cannot use."""
        if not isinstance(row, dict):
            raise MetricsInputError(f"expected a JSON object, got {type(row).__name__}")
        task = _task_key(row, "_ng_task_index", True)
        order = _task_key(row, "_ng_rollout_index", False)
        slot = self._slot(task)
        self.count += 1
        self._task_counts[slot] += 1
        for key, value in _numbers(row):
            if key not in self._sums:
                self._sums[key], self._ns[key] = 0.0, 0
                self._task_sums[key], self._task_ns[key] = _zeros("d", 0), _zeros("q", 0)
            self._sums[key] += value
            self._ns[key] += 1
            sums, ns = self._task_sums[key], self._task_ns[key]
            if len(sums) <= slot:
                grow = len(self._task_counts) - len(sums)
                sums.extend(_zeros("d", grow))
                ns.extend(_zeros("q", grow))
            sums[slot] += value
            ns[slot] += 1
        reward = row.get("reward")
        if isinstance(reward, (int, float)):
            self._reward_slot.append(slot)
            self._reward_order.append(order if isinstance(order, int) else 0)
            self._rewards.append(float(reward))
            self._binary = self._binary and reward in (0.0, 1.0)

    def _slot(self, task: Any) -> int:
        key = task if task is not None else ("row", self.count)  # never equal to a JSON value
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = len(self._task_keys)
            self._task_keys.append(task)
            self._indexed.append(task is not None)
            self._task_counts.append(0)
        return slot

    def result(self) -> dict[str, Any]:
        """`{"agent_metrics", "key_metrics", "group_level_metrics"}` over every row added so far."""
        agent_metrics: dict[str, Any] = {"count": self.count}
        agent_metrics.update({f"mean/{k}": self._sums[k] / self._ns[k] for k in self._sums})
        agent_metrics.update(pass_at_k_of(self._reward_groups(), self._binary))
        names = key_metric_names(agent_metrics)
        return {"agent_metrics": agent_metrics, "key_metrics": {k: agent_metrics[k] for k in names},
                "group_level_metrics": self._group_level()}

    def _group_level(self) -> list[dict[str, Any]]:
        groups = []
        for slot, task in enumerate(self._task_keys):
            if not self._indexed[slot]:
                continue
            entry: dict[str, Any] = {"_ng_task_index": task, "count": self._task_counts[slot]}
            for key, sums in self._task_sums.items():
                n = self._task_ns[key][slot] if slot < len(sums) else 0
                if n:
                    entry[f"mean/{key}"] = sums[slot] / n
            groups.append(entry)
        return groups

    def _reward_groups(self) -> list[list[float]]:
        """Each task's rewards ordered by `_ng_rollout_index` (ties keep arrival order)."""
        slots, orders = self._reward_slot, self._reward_order
        ranked = sorted(range(len(self._rewards)), key=lambda i: (slots[i], orders[i]))
        groups: list[list[float]] = []
        last = -1
        for i in ranked:
            if slots[i] != last:
                groups.append([])
                last = slots[i]
            groups[-1].append(self._rewards[i])
        return groups


class RowsAccumulator:
    """Keeps the rows and hands them to a list-based `compute_metrics` at the end (an environment's own metrics)."""

    def __init__(self, compute: Callable[[list[dict]], dict]) -> None:
        self.count = 0
        self._rows: list[dict] = []
        self._compute = compute
        self._check = MetricsAccumulator()  # the same input checks as the incremental path

    def add(self, row: Any) -> None:
        """Check and keep one row."""
        self._check.add(row)
        self._rows.append(row)
        self.count += 1

    def result(self) -> dict[str, Any]:
        """The environment's metrics over every row kept."""
        return self._compute(self._rows)


def key_metric_names(agent_metrics: dict[str, Any]) -> list[str]:
    """`mean/reward` and pass@k for k = 1, 2, 4, ... and the largest k: a summary, not every k."""
    ks = sorted(int(name[5:].split("/")[0]) for name in agent_metrics if name.startswith("pass@"))
    wanted = {k for k in ks if k & (k - 1) == 0} | set(ks[-1:])
    return [name for name in agent_metrics
            if name == "mean/reward" or (name.startswith("pass@") and int(name[5:].split("/")[0]) in wanted)]


def pass_at_k_of(groups: list[list[float]], binary: bool) -> dict[str, float]:
    """pass@k of `reward` for k = 1..(smallest group) over per-task reward lists (ordered by rollout index)."""
    groups = [g for g in groups if g]
    max_k = min((len(g) for g in groups), default=0)
    if max_k < 2:
        return {}
    totals = [0.0] * (max_k + 1)
    for rewards in groups:
        if binary:
            n, wrong = len(rewards), len(rewards) - int(sum(rewards))
            ratio = 1.0  # C(wrong, k) / C(n, k), updated term by term: no big integers
            for k in range(1, max_k + 1):
                ratio = ratio * max(wrong - k + 1, 0) / (n - k + 1)
                totals[k] += 1.0 - ratio
        else:
            best = rewards[0]
            for k in range(1, max_k + 1):
                best = max(best, rewards[k - 1])
                totals[k] += best
    return {f"pass@{k}/reward": totals[k] / len(groups) for k in range(1, max_k + 1)}


def pass_at_k(groups: list[list[dict]]) -> dict[str, float]:
    """pass@k of `reward` for k = 1..(smallest group), when tasks were repeated.

    Binary rewards use the unbiased estimator 1 - C(n-c, k) / C(n, k); other rewards the mean over tasks of
    the best of the first k repeats (by `_ng_rollout_index`). Values are fractions in [0, 1].
    """
    rewards = [[float(r["reward"]) for r in sorted(g, key=lambda r: r.get("_ng_rollout_index", 0))
                if isinstance(r.get("reward"), (int, float))] for g in groups]
    binary = all(r in (0.0, 1.0) for g in rewards for r in g)
    return pass_at_k_of(rewards, binary)


def aggregate_metrics(rows: Iterable[dict]) -> dict[str, Any]:
    """NeMo-Gym-shaped metrics: means of numeric fields, count, per-task groups and pass@k over repeats."""
    accumulator = MetricsAccumulator()
    for position, row in enumerate(rows):
        try:
            accumulator.add(row)
        except MetricsInputError as exc:
            raise MetricsInputError(f"verify_responses[{position}]: {exc}") from None
    return accumulator.result()


class MetricsRuns:
    """Accumulators of multi-part metrics requests by run id: at most `capacity`, each dropped after `ttl_s` idle."""

    def __init__(self, capacity: int = 32, ttl_s: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.ttl_s, self._clock = capacity, ttl_s, clock
        self._runs: OrderedDict[str, tuple[Accumulator, int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def take(self, run_id: str, part: int, new: Callable[[], Accumulator]) -> Accumulator:
        """The run's accumulator for its part `part` (0 starts a run); a part out of order is a MetricsInputError."""
        now = self._clock()
        while self._runs and now - next(iter(self._runs.values()))[2] > self.ttl_s:
            self._runs.popitem(last=False)
        if part == 0:
            self._runs.pop(run_id, None)
            while len(self._runs) >= self.capacity:
                self._runs.popitem(last=False)
            accumulator: Accumulator = new()
        elif run_id in self._runs and self._runs[run_id][1] == part:
            accumulator = self._runs.pop(run_id)[0]
        else:
            expected = self._runs[run_id][1] if run_id in self._runs else 0
            raise MetricsInputError(f"metrics run {run_id!r}: got part {part}, expected {expected} (parts go in order; "
                                    "an expired or unknown run starts again at part 0)")
        self._runs[run_id] = (accumulator, part + 1, now)
        return accumulator

    def finish(self, run_id: str) -> None:
        """Forget a run (its final part was answered)."""
        self._runs.pop(run_id, None)
