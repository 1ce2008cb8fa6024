"""Resuming a collection: a killed `gym rollout` finished by `--resume`, a truncated last line, the attempts
limit with `_ng_attempt_index`, terminal failures, fresh files without resume, and the trajectories file."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gym_core.cli import main as gym
from gym_core.client import close_client
from gym_core.launcher import Stack
from rollout.collect import DataError, collect, failures_path
from rollout.resume import KeySet, load_state, trim_partial_line

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def row(**fields: object) -> dict:
    return {"responses_create_params": {"input": "hi"}, **fields}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def keys(rows: list[dict]) -> Counter:
    return Counter((r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows)


async def run(stack: Stack, rows: list[dict], output: Path, **kwargs: object):
    try:
        return await collect(stack.url("fake"), rows, output, agent_name="fake", progress=False, **kwargs)
    finally:
        await close_client()


def test_killed_collection_resumes_to_exactly_one_row_per_rollout(stack: Stack, tmp_path: Path,
                                                                  registry_env: None, caplog) -> None:
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(row(delay=0.05, with_tokens=True)) + "\n" for _ in range(40)))
    output, trajectories = tmp_path / "rollouts.jsonl", tmp_path / "trajectories.jsonl"
    args = ["rollout", "--agent", "fake", "--input", str(data), "--output", str(output), "--num-repeats", "2",
            "--concurrency", "2", "--registry", stack.registry_url, "--no-progress",
            "--trajectories", str(trajectories)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "gym_core.cli", *args], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not output.exists() or output.read_text().count("\n") < 10):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = lines(output)
    assert 10 <= len(first) < 80, "the collection must be interrupted part way"
    with open(output, "ab") as out:  # a crash in the middle of a write
        out.write(b'{"_ng_task_index": 39, "_ng_rollout_index": 1, "respo')

    with caplog.at_level(logging.WARNING, logger="rollout.resume"):
        assert gym([*args, "--resume"]) == 0
    assert "last line is incomplete" in caplog.text
    done = lines(output)
    assert keys(done) == Counter({(t, k): 1 for t in range(40) for k in range(2)})
    assert done[:len(first)] == first  # appended to, nothing rewritten
    assert Counter((t["task_index"], t["repeat_index"]) for t in lines(trajectories)) == keys(done)
    assert all(t["prompt_ids"] == [1, t["task_index"]] and t["completion_mask"] == [1, 1]
               for t in lines(trajectories))
    assert failures_path(output).read_text() == ""


def test_a_truncated_last_line_is_trimmed_with_a_warning(tmp_path: Path, caplog) -> None:
    output = tmp_path / "r.jsonl"
    good = json.dumps({"_ng_task_index": 0, "_ng_rollout_index": 0, "reward": 1.0}) + "\n"
    output.write_text(good + '{"_ng_task_index": 1, "_ng_rol')
    sidecar = failures_path(output)
    sidecar.write_text(json.dumps({"_ng_task_index": 2, "_ng_rollout_index": 0}))  # whole, only the newline lost
    with caplog.at_level(logging.WARNING, logger="rollout.resume"):
        state = load_state(output, sidecar, "a")
    assert output.read_text() == good and "r.jsonl: the last line is incomplete" in caplog.text
    assert sidecar.read_text().endswith("}\n")
    assert len(state.done) == 1 and ("a", 0, 0) in state.done and state.attempts == Counter({("a", 2, 0): 1})
    trim_partial_line(output)  # a whole file is left alone
    assert output.read_text() == good
    output.write_text(good + "{broken\n" + good)
    with pytest.raises(ValueError, match=r"r.jsonl:2: not valid JSON"):
        load_state(output, sidecar, "a")


async def test_truncated_output_then_resume_in_process(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    await run(stack, [row(), row()], output, num_repeats=2)
    text = output.read_text()
    output.write_text(text + text.splitlines()[0][:20])
    summary = await run(stack, [row(), row()], output, num_repeats=2, resume=True)
    assert (summary.count, summary.resumed) == (0, 4)
    assert output.read_text() == text
    output.write_text(text + "{not json\n" + text)
    with pytest.raises(DataError, match="not valid JSON"):
        await run(stack, [row()], output, resume=True)


async def test_failed_attempts_are_retried_up_to_the_limit(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    rows = [row(behaviour="error"), row(behaviour="flaky"), row(behaviour="terminal"), row()]
    summary = await run(stack, rows, output)
    assert (summary.count, summary.failures) == (1, 3)
    for attempt in (1, 2):
        summary = await run(stack, rows, output, resume=True)
        assert (summary.count, summary.failures, summary.resumed) == ((1, 1) if attempt == 1 else (0, 1)) + (
            attempt,)
    summary = await run(stack, rows, output, resume=True)  # task 0 is out of its 3 attempts
    assert (summary.count, summary.failures, summary.resumed, summary.gave_up) == (0, 0, 2, 2)
    failed = lines(failures_path(output))
    assert [f.get("_ng_attempt_index") for f in failed if f["_ng_task_index"] == 0] == [None, 1, 2]
    assert [f["_ng_task_index"] for f in failed].count(2) == 1 and failed[2]["_ng_failure_terminal"] is True
    done = lines(output)
    assert keys(done) == Counter({(1, 0): 1, (3, 0): 1})
    assert next(r for r in done if r["_ng_task_index"] == 1)["_ng_attempt_index"] == 1
    summary = await run(stack, rows, output, resume=True, max_attempts=4)  # a higher limit: one more try
    assert (summary.failures, lines(failures_path(output))[-1]["_ng_attempt_index"]) == (1, 3)


async def test_without_resume_output_and_sidecar_start_fresh(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    stale = json.dumps({"_ng_task_index": 0, "_ng_rollout_index": 0, "error": {"type": "old"}}) + "\n"
    output.write_text(stale)
    failures_path(output).write_text(stale * 5)
    summary = await run(stack, [row()], output)
    assert (summary.count, summary.resumed) == (1, 0)
    assert failures_path(output).read_text() == "" and len(lines(output)) == 1
    summary = await run(stack, [row()], output, resume=True, max_attempts=1)
    assert (summary.count, summary.resumed, summary.gave_up) == (0, 1, 0)


async def test_trajectories_skip_rollouts_that_are_not_token_exact(stack: Stack, tmp_path: Path) -> None:
    output, trajectories = tmp_path / "r.jsonl", tmp_path / "t" / "traj.jsonl"
    summary = await run(stack, [row(with_tokens=True, reward_value=0.5), row()], output,
                        trajectories=trajectories)
    assert (summary.count, summary.trajectory_errors) == (2, 1)
    [t] = lines(trajectories)
    assert (t["reward"], t["group_id"], t["completion_ids"], t["logprobs"]) == (0.5, "fake/0", [0, 2], [-0.5, -0.25])
    trajectories.write_text("")  # lost: a resume writes the trajectories of finished rollouts again
    summary = await run(stack, [row(with_tokens=True, reward_value=0.5), row()], output, resume=True,
                        trajectories=trajectories)
    assert summary.resumed == 2 and [t["task_index"] for t in lines(trajectories)] == [0]


def test_key_set_is_compact_and_exact() -> None:
    keys = KeySet()
    for task in range(200_000):
        for repeat in range(4):
            keys.add(("env", task, repeat))
    keys.add(("env", 0, 0))  # twice counts once
    keys.add(("env", "task-x", 0))  # not an integer index: kept as is
    keys.add(("other", 5, 1))
    assert len(keys) == 800_002
    assert ("env", 199_999, 3) in keys and ("env", 200_000, 0) not in keys and ("other", 5, 0) not in keys
    assert ("env", "task-x", 0) in keys and ("env", -1, 0) not in keys and ("nobody", 0, 0) not in keys
    assert keys.nbytes < 4 * 200_000 // 8 * 2  # a bit per rollout (with growth slack), not a tuple per rollout
