"""Agent-reported outcomes in a 2xx body: `_ng_no_persist` (written nowhere, re-run on resume) and
`_ng_failure_class` (to the sidecar with its class, out of the output and the metrics; terminal ones not retried)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gym_core.cli import main as gym
from gym_core.client import close_client
from gym_core.launcher import Stack
from rollout.collect import CollectionSummary, collect, collect_in_memory, failures_path
from rollout.metrics import metrics_path


def row(**fields: object) -> dict:
    return {"responses_create_params": {"input": "hi"}, **fields}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fake_runs(stack: Stack, reset: bool = False) -> int:
    """Runs the fake agent has answered (since the last reset); `reset` starts the count again."""
    if reset:
        httpx.post(stack.url("fake") + "/stats/reset")
    return httpx.get(stack.url("fake") + "/stats").json()["runs"]


async def run(stack: Stack, rows: list[dict], output: Path, **kwargs: object) -> CollectionSummary:
    try:
        return await collect(stack.url("fake"), rows, output, agent_name="fake", concurrency=4, timeout=5.0,
                             progress=False, **kwargs)
    finally:
        await close_client()


async def test_no_persist_is_written_nowhere_and_resumed(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "rollouts.jsonl"
    first = [row(behaviour="no_persist"), row(), row(behaviour="failure_class"), row(behaviour="terminal")]
    summary = await run(stack, first, output)
    assert (summary.count, summary.failures, summary.not_persisted) == (1, 2, 1)
    assert "not_persisted=1" in summary.line()
    assert [(r["_ng_task_index"], r["_ng_rollout_index"]) for r in lines(output)] == [(1, 0)]
    failed = {f["_ng_task_index"]: f for f in lines(failures_path(output))}
    assert set(failed) == {2, 3}  # the kill-shaped result is not in the sidecar either
    assert failed[2]["_ng_failure_class"] == "transient" and "_ng_failure_terminal" not in failed[2]
    assert failed[3]["_ng_failure_class"] == "skipped" and failed[3]["_ng_failure_terminal"] is True
    (entry,) = json.loads(metrics_path(output).read_text())
    assert entry["agent_metrics"]["count"] == 1 and entry["agent_metrics"]["mean/reward"] == 1.0

    fake_runs(stack, reset=True)
    again = [row(), row(), row(behaviour="failure_class"), row(behaviour="terminal")]
    resumed = await run(stack, again, output, resume=True)
    assert fake_runs(stack) == 2  # the killed one and the transient one
    assert (resumed.count, resumed.failures, resumed.resumed, resumed.gave_up) == (1, 1, 1, 1)
    assert sorted(r["_ng_task_index"] for r in lines(output)) == [0, 1]
    retried = [f for f in lines(failures_path(output)) if f["_ng_task_index"] == 2]
    assert [f.get("_ng_attempt_index") for f in retried] == [None, 1]


async def test_in_memory_counts_what_is_not_persisted(stack: Stack) -> None:
    try:
        sink = await collect_in_memory(stack.url("fake"), [row(behaviour="no_persist"), row()], agent_name="fake",
                                       num_repeats=2)
    finally:
        await close_client()
    assert (len(sink.results), len(sink.failed), sink.not_persisted) == (2, 0, 2)


def test_gym_rollout_reports_not_persisted(stack: Stack, tmp_path: Path, registry_env: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row(behaviour="no_persist")) + "\n" + json.dumps(row()) + "\n")
    output = tmp_path / "out.jsonl"
    assert gym(["rollout", "--agent", "fake", "--input", str(data), "--output", str(output),
                "--registry", stack.registry_url, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "not_persisted=1" in captured.out and "--resume runs them again" in captured.err
    assert len(lines(output)) == 1 and not failures_path(output).read_text()
