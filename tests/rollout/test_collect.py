"""The collector against a fake agent server: output rows, the failure sidecar, bounded concurrency, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gym_core.cli import main as gym
from gym_core.client import close_client
from gym_core.launcher import Stack
from rollout.collect import DataError, collect, count_rows, failures_path, read_rows

HERE = Path(__file__).parent


def row(**fields: object) -> dict:
    return {"responses_create_params": {"input": "hi"}, **fields}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_rollouts_and_failures_go_to_their_files(stack: Stack, tmp_path: Path) -> None:
    rows = [row(reward_value=float(i % 2)) for i in range(6)]
    rows += [row(behaviour=b) for b in ("error", "no_reward", "failure_class", "slow")]
    output = tmp_path / "out" / "rollouts.jsonl"
    try:
        summary = await collect(stack.url("fake"), rows, output, agent_name="fake", num_repeats=2,
                                concurrency=4, timeout=1.0, progress=False)
    finally:
        await close_client()
    assert (summary.count, summary.failures, summary.mean_reward) == (12, 8, 0.5)
    done = lines(output)
    assert sorted((r["_ng_task_index"], r["_ng_rollout_index"]) for r in done) == [
        (t, k) for t in range(6) for k in range(2)]
    assert all(r["agent_ref"] == {"type": "responses_api_agents", "name": "fake"} for r in done)
    assert all(r["reward"] == float(r["_ng_task_index"] % 2) for r in done)
    failed = lines(failures_path(output))
    assert output.with_name("rollouts_failures.jsonl") == failures_path(output)
    by_task = {(f["_ng_task_index"], f["_ng_rollout_index"]): f["error"] for f in failed}
    assert set(by_task) == {(t, k) for t in range(6, 10) for k in range(2)}
    assert by_task[(6, 0)]["type"] == "http_error" and by_task[(6, 0)]["status"] == 500
    assert "fake failure" in by_task[(6, 0)]["message"]
    assert by_task[(7, 1)]["type"] == "invalid_response"
    assert by_task[(8, 0)] == {"type": "transient", "message": "tool sandbox died"}
    assert by_task[(9, 0)]["type"] == "CallTimeout"
    assert not any("reward" in f for f in failed)  # a failure is never a reward of 0


async def test_concurrency_and_resident_tasks_are_bounded(stack: Stack, tmp_path: Path) -> None:
    already = httpx.post(f"{stack.url('fake')}/stats/reset").json()["in_flight"]  # slow ones of other tests
    resident: list[int] = []

    def rows() -> Iterator[dict]:
        for i in range(40):
            resident.append(sum(1 for t in asyncio.all_tasks() if t.get_coro().__name__ == "run_in_slot"))
            yield row(reward_value=1.0, _ng_task_index=100 + i)

    try:
        summary = await collect(stack.url("fake"), rows(), tmp_path / "r.jsonl", agent_name="fake",
                                concurrency=3, progress=False)
    finally:
        await close_client()
    assert (summary.count, summary.failures) == (40, 0)
    assert max(resident) <= 3, "rows must be pulled only when a slot is free"
    assert httpx.get(f"{stack.url('fake')}/stats").json()["max_in_flight"] <= already + 3
    assert {r["_ng_task_index"] for r in lines(tmp_path / "r.jsonl")} == set(range(100, 140))


async def test_unreachable_agent_is_a_failure_not_a_reward(tmp_path: Path) -> None:
    try:
        summary = await collect("http://127.0.0.1:9", [row()], tmp_path / "o.jsonl", agent_name="gone",
                                num_repeats=2, progress=False, timeout=5)
    finally:
        await close_client()
    assert (summary.count, summary.failures) == (0, 2)
    assert (tmp_path / "o.jsonl").read_text() == ""
    assert {f["error"]["type"] for f in lines(tmp_path / "o_failures.jsonl")} == {"ServerUnreachable"}


def test_read_rows_validates_and_limits(tmp_path: Path) -> None:
    good = write_rows(tmp_path / "good.jsonl", [row(i=i) for i in range(5)])
    assert [r["i"] for r in read_rows(good, limit=3)] == [0, 1, 2]
    assert count_rows(good) == 5 and count_rows(good, 2) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row()) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:3: not valid JSON"):
        list(read_rows(bad))
    bad.write_text('{"input": "hi"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*responses_create_params"):
        list(read_rows(bad))


def test_gym_rollout_cli_against_running_servers(stack: Stack, tmp_path: Path, registry_env: None,
                                                 capsys: pytest.CaptureFixture) -> None:
    data = write_rows(tmp_path / "tasks.jsonl", [row(reward_value=1.0), row(reward_value=0.0), row()])
    output = tmp_path / "rollouts.jsonl"
    code = gym(["rollout", "--agent", "fake", "--input", str(data), "--output", str(output), "--limit", "2",
                "--num-repeats", "3", "--concurrency", "2", "--registry", stack.registry_url, "--no-progress"])
    assert code == 0
    assert len(lines(output)) == 6
    out = capsys.readouterr().out
    assert "mean reward: 0.5000 over 6 rollouts" in out and "rollouts=6" in out


def test_gym_rollout_cli_unknown_agent(stack: Stack, tmp_path: Path, registry_env: None,
                                       capsys: pytest.CaptureFixture) -> None:
    data = write_rows(tmp_path / "tasks.jsonl", [row()])
    code = gym(["rollout", "--agent", "fkae", "--input", str(data), "--output", str(tmp_path / "o.jsonl"),
                "--registry", stack.registry_url, "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "'fkae' is not registered" in err and "fake" in err


def test_gym_rollout_cli_with_config_starts_and_stops_servers(tmp_path: Path, registry_env: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    config = tmp_path / "gym.yaml"
    config.write_text("servers:\n  fake: {kind: agent, entrypoint: 'fake_agent:FakeAgentForTests'}\n")
    data = write_rows(tmp_path / "tasks.jsonl", [row(reward_value=0.25)])
    output = tmp_path / "rollouts.jsonl"
    code = gym(["rollout", "--config", str(config), "servers.fake.note=x", "--agent", "fake", "--input", str(data),
                "--output", str(output), "--num-repeats", "2", "--no-progress"])
    assert code == 0
    assert [r["reward"] for r in lines(output)] == [0.25, 0.25]
