"""The `gym` command: help everywhere, `gym up` / `status` / `down` on real processes, clean errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_core.cli import main as gym
from tests.processes import gone

# A test double server, imported by the server processes from a temporary directory.
DOUBLE = """
from gym_core.server import GymServer


class PlainServerForTests(GymServer):
    kind = "resources"
"""
CONFIG = """
servers:
  alpha: {kind: resources, entrypoint: gym_cli_double}
  beta:  {kind: resources, entrypoint: gym_cli_double}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "gym_cli_double.py").write_text(DOUBLE)
    (tmp_path / "gym_cli_dies.py").write_text("raise SystemExit('cli double refuses to start')\n")
    (tmp_path / "gym.yaml").write_text(CONFIG)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


@pytest.fixture
def gym_up(workdir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`gym up` in a subprocess on a free registry port; yields it and its registry URL; always stops it."""
    process = subprocess.Popen([sys.executable, "-m", "gym_core.cli", "up", str(workdir / "gym.yaml"),
                                "--registry-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, start_new_session=True)
    try:
        registry = None
        for line in process.stdout:
            if line.startswith("registry: "):
                registry = line.split()[1]
                break
        assert registry, f"gym up exited with {process.wait()} before printing its registry"
        yield process, registry
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)


@pytest.mark.parametrize("argv, needle", [
    ([], "gym up examples/quickstart.yaml"),
    (["up"], "--registry-port"),
    (["status"], "--registry"),
    (["down"], "--timeout"),
    (["rollout"], "--num-repeats"),
    (["env", "test"], "conformance check"),
    (["env", "new"], "--root"),
    (["env", "list"], "reward range"),
])
def test_help_everywhere(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        gym([*argv, "--help"])
    assert info.value.code == 0
    assert needle in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert gym([]) == 2
    assert "rollout" in capsys.readouterr().out


def test_up_status_down(gym_up: tuple[subprocess.Popen, str], capsys: pytest.CaptureFixture) -> None:
    process, registry = gym_up
    assert gym(["status", "--registry", registry]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("alpha", "beta"))]
    assert sorted((r[0], r[1], r[4], r[5]) for r in rows) == [("alpha", "resources", "ok", "0"),
                                                               ("beta", "resources", "ok", "0")]
    pids = [int(r[3]) for r in rows]
    assert gym(["down", "--registry", registry]) == 0
    assert process.wait(timeout=30) == 0
    assert all(gone(pid) for pid in pids)
    assert gym(["status", "--registry", registry]) == 1
    assert "no registry answering" in capsys.readouterr().err


def test_up_stops_everything_on_sigterm(gym_up: tuple[subprocess.Popen, str], capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    process, registry = gym_up
    monkeypatch.setenv("GYM_REGISTRY_URL", registry)
    assert gym(["status"]) == 0
    pids = [int(line.split()[3]) for line in capsys.readouterr().out.splitlines() if line.startswith(("alpha", "beta"))]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def test_up_with_a_server_dying_at_start(workdir: Path) -> None:
    config = workdir / "dies.yaml"
    config.write_text(CONFIG + "  gamma: {kind: resources, entrypoint: gym_cli_dies}\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "gym_core.cli", "up", str(config), "--registry-port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "server 'gamma' exited with code 1 while starting" in result.stderr
    assert "cli double refuses to start" in result.stderr
    assert time.monotonic() - started < 60


def test_up_with_a_bad_config_is_one_readable_error(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    config = workdir / "typo.yaml"
    config.write_text("servers:\n  p: {kind: polcy}\n")
    assert gym(["up", str(config), "--registry-port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gym up: ") and "did you mean 'policy'" in err and "Traceback" not in err
    assert gym(["up", str(config), "oops", "--registry-port", "0"]) == 1
    assert "override 'oops': expected key.sub=value" in capsys.readouterr().err


def test_down_without_registry(capsys: pytest.CaptureFixture) -> None:
    assert gym(["down", "--registry", "http://127.0.0.1:9"]) == 1
    assert "nothing to stop" in capsys.readouterr().err


def test_env_test_unknown_environment(capsys: pytest.CaptureFixture) -> None:
    assert gym(["env", "test", "wether"]) == 2
    assert "did you mean 'weather'" in capsys.readouterr().err
