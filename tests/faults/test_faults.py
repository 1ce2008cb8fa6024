"""Faults injected into a real stack while `gym rollout` runs (issue 10, findings 4-7): each test ends with every
(task, repeat) exactly once in the output, or failed with the right class, and no process left.

Short forms share one `gym up` (weather keep_alive_s=1.5 and an episode deadline of 10 s, so the 30 s stall's
mechanism shows in seconds; killing the agent and the resources server are `slow`); test_faults_full.py runs the
issue's own numbers (`make reliability`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    WEATHER_ROWS,
    GymUp,
    assert_each_pair_once,
    finish,
    gym_rollout,
    gym_up,
    line_count,
    outcome,
    quickstart,
    until,
    write_rows,
)

REPEATS = 50
TASKS = len(WEATHER_ROWS)
TOTAL = TASKS * REPEATS
COLLECT = ("--num-repeats", str(REPEATS), "--concurrency", "64", "--timeout", "120")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    config = quickstart(weather={"keep_alive_s": 1.5}, agent={"episode_timeout_s": 10})
    with gym_up(config, tmp_path_factory.mktemp("stack")) as up:
        yield up


def rows_file(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "rows.jsonl", WEATHER_ROWS)


def stall(pid: int, seconds: float) -> None:
    """SIGSTOP a process for `seconds`, always continued."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def started(output: Path) -> int:
    """Wait until the collection is under way; the lines written so far (fewer than all: it is still running)."""
    written = until(lambda: line_count(output) >= 30 and line_count(output), 120, "the collection to get going")
    assert written < TOTAL, "the collection finished before the fault; make it longer"
    return written


def test_stall_within_the_deadline_only_delays(stack: GymUp, tmp_path: Path, record_property) -> None:
    output = tmp_path / "out.jsonl"
    with gym_rollout(stack.registry, rows_file(tmp_path), output, *COLLECT) as collector:
        before = started(output)
        stall(stack.pid("weather"), 4.0)  # past its 1.5 s keep-alive, within the 10 s episode deadline
        assert finish(collector, output) == 0
    result = outcome(output)
    assert_each_pair_once(result, TASKS, REPEATS, allowed=set())
    assert sum(result.done.values()) == TOTAL and not result.failed
    record_property("injected", f"SIGSTOP of the resources server for 4 s (keep-alive 1.5 s, deadline 10 s) "
                                f"with 64 rollouts in flight, {before}/{TOTAL} done")
    record_property("outcome", f"{TOTAL}/{TOTAL} rollouts in the output, 0 failures")


def test_stall_past_the_deadline_is_a_classified_timeout(stack: GymUp, tmp_path: Path, record_property) -> None:
    output = tmp_path / "out.jsonl"
    with gym_rollout(stack.registry, rows_file(tmp_path), output, *COLLECT) as collector:
        started(output)
        stall(stack.pid("weather"), 13.0)  # past the 10 s episode deadline
        assert finish(collector, output) == 0
    result = outcome(output)
    assert_each_pair_once(result, TASKS, REPEATS, allowed={"episode_timeout"})
    timed_out = result.classes["episode_timeout"]
    assert 1 <= timed_out <= 64  # only the rollouts in flight during the stall; the rest finished after it
    assert all("episode_timeout_s=10" in rows[-1]["error"]["message"] for rows in result.failed.values())
    record_property("injected", "SIGSTOP of the resources server for 13 s, past the 10 s episode deadline")
    record_property("outcome", f"{timed_out} in-flight rollouts failed as episode_timeout, "
                               f"{sum(result.done.values())} in the output; each pair exactly once")


@pytest.mark.parametrize("victim", ["policy", pytest.param("agent", marks=pytest.mark.slow),
                                    pytest.param("weather", marks=pytest.mark.slow)])
def test_kill_9_is_restarted_and_the_collector_waits(stack: GymUp, tmp_path: Path, victim: str,
                                                     record_property) -> None:
    output = tmp_path / "out.jsonl"
    with gym_rollout(stack.registry, rows_file(tmp_path), output, *COLLECT) as collector:
        started(output)
        old = stack.pid(victim)
        os.kill(old, signal.SIGKILL)
        entry = stack.wait_restarted(victim, old)
        assert finish(collector, output) == 0
    result = outcome(output)
    assert_each_pair_once(result, TASKS, REPEATS, allowed=set())
    assert sum(result.done.values()) == TOTAL and not result.failed  # no attempt was spent on the dead server
    log = output.with_suffix(".log").read_text()
    assert "holding rollouts" in log and "reachable again" in log, log[-2000:]
    assert entry["restarts"] >= 1 and entry["url"]
    record_property("injected", f"kill -9 of the {victim} server with 64 rollouts in flight")
    record_property("outcome", f"{victim} restarted (restarts={entry['restarts']}), the collector held rollouts "
                               f"meanwhile; {TOTAL}/{TOTAL} in the output, 0 failures")


def test_collector_killed_and_resumed_runs_each_rollout_once(stack: GymUp, tmp_path: Path, record_property) -> None:
    output, rows = tmp_path / "out.jsonl", rows_file(tmp_path)
    with gym_rollout(stack.registry, rows, output, *COLLECT) as collector:
        started(output)
        os.killpg(collector.pid, signal.SIGKILL)
        collector.wait(timeout=60)
    partial = line_count(output)
    with gym_rollout(stack.registry, rows, output, *COLLECT, "--resume") as collector:
        assert finish(collector, output) == 0
    result = outcome(output)
    assert_each_pair_once(result, TASKS, REPEATS, allowed=set())
    assert sum(result.done.values()) == TOTAL
    record_property("injected", f"kill -9 of `gym rollout` after {partial} rollouts, then `--resume`")
    record_property("outcome", f"{TOTAL}/{TOTAL} rollouts, each exactly once")


def bad_rows() -> list[tuple[dict, str]]:
    """Rows that are the data's fault, each with the field its error must name."""
    paris = WEATHER_ROWS[0]
    params = paris["responses_create_params"]
    bad_tool = {**params["tools"][0], "parameters": {"type": "object", "properties": {"city": {"enum": []}}}}
    return [
        ({k: v for k, v in paris.items() if k != "expected_condition"}, "expected_condition: Field required"),
        ({**paris, "expected_temperature_c": "warm"}, "expected_temperature_c: Input should be a valid integer"),
        ({**paris, "responses_create_params": {**params, "tools": [bad_tool]}}, "properties.city.enum"),
        ({**paris, "responses_create_params": {**params, "metadata": {"extra_body": "[1]"}}},
         "metadata.extra_body must be a JSON object"),
        ({**paris, "responses_create_params": {**params, "metadata": {"extra_body": '{"messages": []}'}}},
         "messages may not be set"),
    ]


def test_bad_rows_fail_as_the_rows_fault_and_are_not_retried(stack: GymUp, tmp_path: Path, record_property) -> None:
    long_question = "What is the weather in Paris? " + "Tell me about London and Tokyo today. " * 3700  # 140 KB
    long_row = {**WEATHER_ROWS[0], "responses_create_params": {
        **WEATHER_ROWS[0]["responses_create_params"], "input": [{"role": "user", "content": long_question}]}}
    bad = bad_rows()
    rows = [*WEATHER_ROWS, long_row, *(row for row, _ in bad)]
    path, output = write_rows(tmp_path / "rows.jsonl", rows), tmp_path / "out.jsonl"
    args = ("--num-repeats", "2", "--concurrency", "16", "--timeout", "120")
    with gym_rollout(stack.registry, path, output, *args) as collector:
        assert finish(collector, output) == 0
    result = outcome(output)
    good, first_bad = len(WEATHER_ROWS) + 1, len(WEATHER_ROWS) + 1
    assert set(result.done) == {(t, r) for t in range(good) for r in range(2)}
    for offset, (_, field) in enumerate(bad):
        for repeat in range(2):
            [failure] = result.failed[(first_bad + offset, repeat)]
            assert failure["_ng_failure_class"] == "invalid_row" and failure["_ng_failure_terminal"] is True
            assert failure["error"]["status"] == 422 and field in failure["error"]["message"]
    with gym_rollout(stack.registry, path, output, *args, "--resume") as collector:
        assert finish(collector, output) == 0
    again = outcome(output)
    assert again.done == result.done and all(len(v) == 1 for v in again.failed.values())  # nothing re-ran
    record_property("injected", "rows missing or mistyping their fields, a tool schema with enum [], "
                                "metadata.extra_body '[1]' and '{\"messages\": []}', a 140 KB user message")
    record_property("outcome", f"{len(bad) * 2} attempts failed as invalid_row (422, field named, terminal: "
                               f"not retried on --resume); the 140 KB row and the good rows succeeded")
