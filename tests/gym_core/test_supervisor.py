"""The launcher's restart policy on real processes: a killed server comes back on a new URL, re-registered and
counted; past its limit, or on an exit its policy does not cover, the stack stops (gym_core/supervisor.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from gym_core.config import ConfigError, load_config
from gym_core.launcher import Stack, launch
from tests.processes import gone

FAST = {"backoff_s": 0.1, "max_backoff_s": 0.2}


def weather(**restart: object) -> dict:
    return {"kind": "resources", "env": "weather", "restart": {**FAST, **restart}}


def until(condition, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def registered(stack: Stack, name: str) -> dict | None:
    reply = httpx.get(f"{stack.registry_url}/servers/{name}")
    return reply.json() if reply.status_code == 200 else None


@pytest.mark.timeout(120)
def test_a_killed_server_is_restarted_on_a_new_url_and_counted() -> None:
    config = load_config({"servers": {"weather": weather(), "other": weather()}})
    with launch(config, echo_logs=False) as stack:
        first_pid, first_url = stack.servers["weather"].pid, stack.url("weather")
        other_pid = stack.servers["other"].pid
        os.kill(first_pid, signal.SIGKILL)
        until(lambda: (registered(stack, "weather") or {}).get("pid") not in (None, first_pid))
        info = registered(stack, "weather")
        assert info["restarts"] == 1 and info["url"] != first_url
        until(lambda: stack.servers["weather"].url == info["url"])  # the launcher saw it healthy
        assert httpx.get(f"{info['url']}/health").json()["name"] == "weather"
        assert stack.servers["weather"].restarts == 1 and stack.servers["other"].pid == other_pid
        status = subprocess.run([sys.executable, "-m", "gym_core.cli", "status", "--registry", stack.registry_url],
                                capture_output=True, text=True, timeout=60)
        row = next(line.split() for line in status.stdout.splitlines() if line.startswith("weather"))
        assert row[4:] == ["ok", "1"]  # HEALTH, RESTARTS
        pids = [first_pid, info["pid"], other_pid]
    assert all(gone(pid) for pid in pids)


@pytest.mark.timeout(120)
def test_past_max_restarts_the_stack_stops_with_the_reason() -> None:
    config = load_config({"servers": {"weather": weather(max_restarts=1)}})
    with launch(config, echo_logs=False) as stack:
        first = stack.servers["weather"].pid
        os.kill(first, signal.SIGKILL)
        until(lambda: stack.servers["weather"].restarts == 1 and stack.servers["weather"].url is not None
              and (registered(stack, "weather") or {}).get("pid") == stack.servers["weather"].pid)
        second = stack.servers["weather"].pid
        os.kill(second, signal.SIGKILL)
        dead = stack.wait(poll_s=0.05)
        assert dead is not None and dead.name == "weather"
        assert "2 exits within 600 s are more than restart.max_restarts=1 allows" in stack.failure
        assert registered(stack, "weather") is None  # a dead server is never left registered
    assert gone(first) and gone(second)


@pytest.mark.timeout(120)
def test_an_exit_the_policy_does_not_cover_stops_the_stack() -> None:
    with launch(load_config({"servers": {"weather": weather()}}), echo_logs=False) as stack:
        os.kill(stack.servers["weather"].pid, signal.SIGTERM)  # a clean stop: exit code 0
        dead = stack.wait(poll_s=0.05)
        assert dead is not None and "exited with code 0 (restart.when=on-failure)" in stack.failure
        assert stack.servers["weather"].restarts == 0


def test_restart_policy_is_validated_and_never_reaches_the_server() -> None:
    with pytest.raises(ConfigError, match=r"servers.a.restart.when: Input should be 'on-failure', 'always' or"):
        load_config({"servers": {"a": {"kind": "resources", "env": "weather", "restart": {"when": "sometimes"}}}})
    spec = load_config({"servers": {"a": weather(max_restarts=2)}}).servers["a"]
    assert spec.restart.max_restarts == 2 and "restart" not in spec.block()
    assert spec.restart.covers(-9) and spec.restart.covers(1) and not spec.restart.covers(0)
