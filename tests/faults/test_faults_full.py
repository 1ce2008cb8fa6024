"""The faults at the issue's own numbers (`make reliability`): the default 30 s keep-alive, a 32 s SIGSTOP with 64
rollouts in flight (all failed before the fix), a stall past a 45 s episode deadline, kill -9 at 256 in flight."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.faults.harness import (
    WEATHER_ROWS,
    GymUp,
    assert_each_pair_once,
    finish,
    gym_rollout,
    gym_up,
    outcome,
    quickstart,
)
from tests.faults.test_faults import rows_file, stall, started

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TASKS, REPEATS = len(WEATHER_ROWS), 250


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with gym_up(quickstart(agent={"episode_timeout_s": 45}), tmp_path_factory.mktemp("stack")) as up:
        yield up


def collect_through(stack: GymUp, tmp_path: Path, concurrency: int, fault) -> tuple:  # noqa: ANN001
    output = tmp_path / "out.jsonl"
    args = ("--num-repeats", str(REPEATS), "--concurrency", str(concurrency), "--timeout", "300")
    with gym_rollout(stack.registry, rows_file(tmp_path), output, *args) as collector:
        started(output)
        detail = fault()
        assert finish(collector, output, timeout=600) == 0
    return outcome(output), detail


def test_a_32s_stall_past_the_default_keep_alive_only_delays(stack: GymUp, tmp_path: Path, record_property) -> None:
    result, _ = collect_through(stack, tmp_path, 64, lambda: stall(stack.pid("weather"), 32.0))
    assert_each_pair_once(result, TASKS, REPEATS, allowed=set())
    assert sum(result.done.values()) == TASKS * REPEATS and not result.failed
    record_property("injected", "SIGSTOP of the resources server for 32 s (keep-alive 30 s, deadline 45 s), "
                                "64 rollouts in flight: before the fix all 64 failed with 502 Connection reset")
    record_property("outcome", f"{TASKS * REPEATS}/{TASKS * REPEATS} in the output, 0 failures")


def test_a_stall_past_the_deadline_is_a_classified_timeout(stack: GymUp, tmp_path: Path, record_property) -> None:
    result, _ = collect_through(stack, tmp_path, 64, lambda: stall(stack.pid("weather"), 50.0))
    assert_each_pair_once(result, TASKS, REPEATS, allowed={"episode_timeout"})
    assert 1 <= result.classes["episode_timeout"] <= 64
    record_property("injected", "SIGSTOP of the resources server for 50 s, past the 45 s episode deadline")
    record_property("outcome", f"{result.classes['episode_timeout']} in-flight rollouts failed as episode_timeout, "
                               "the rest in the output; each pair exactly once")


@pytest.mark.parametrize("victim", ["policy", "agent", "weather"])
def test_kill_9_at_256_in_flight(stack: GymUp, tmp_path: Path, victim: str, record_property) -> None:
    def kill() -> int:
        old = stack.pid(victim)
        os.kill(old, signal.SIGKILL)
        return stack.wait_restarted(victim, old)["restarts"]

    result, restarts = collect_through(stack, tmp_path, 256, kill)
    assert_each_pair_once(result, TASKS, REPEATS, allowed=set())
    assert sum(result.done.values()) == TASKS * REPEATS and not result.failed
    record_property("injected", f"kill -9 of the {victim} server with 256 rollouts in flight")
    record_property("outcome", f"restarted (restarts={restarts}); {TASKS * REPEATS}/{TASKS * REPEATS} in the "
                               "output, 0 attempts spent")
