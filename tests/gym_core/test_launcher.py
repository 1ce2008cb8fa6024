"""The launch API and serve.py: real server processes, registry, health, failures at start, clean stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from gym_core.config import load_config
from gym_core.launcher import LaunchError, launch
from gym_core.registry import Registry, RegistryService
from gym_core.serve import ServeError, build_server, default_entrypoint, load_server_class
from tests.processes import gone

# Test doubles, written into a temporary directory that the server processes import from.
DOUBLES = '''
import asyncio, os, signal
from fastapi import FastAPI
from gym_core.server import GymServer


class EchoServerForTests(GymServer):
    """Test double: a resources server that reports its config and can misbehave on request."""

    kind = "resources"

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/config")
        async def config() -> dict:
            return self.config.model_dump()

    async def startup(self) -> None:
        if getattr(self.config, "pid_file", None):
            open(self.config.pid_file, "w").write(str(os.getpid()))
        if getattr(self.config, "ignore_sigterm", False):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if getattr(self.config, "fail_startup", False):
            raise ValueError("cannot open the model")
        if getattr(self.config, "hang", False):
            await asyncio.sleep(60)
'''
DIES_ON_IMPORT = 'print("about to fail", flush=True)\nraise RuntimeError("boom at import")\n'
EXITS = 'import sys\nprint("exiting on purpose", flush=True)\nsys.exit(3)\n'


@pytest.fixture
def doubles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "gym_test_doubles.py").write_text(DOUBLES)
    (tmp_path / "gym_test_dies.py").write_text(DIES_ON_IMPORT)
    (tmp_path / "gym_test_exits.py").write_text(EXITS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def echo(**extra: object) -> dict:
    return {"kind": "resources", "entrypoint": "gym_test_doubles:EchoServerForTests", **extra}


def pid_from(path: Path) -> int:
    return int(path.read_text())


def test_launch_serves_registers_and_stops_everything(doubles: Path, capsys: pytest.CaptureFixture) -> None:
    config = load_config({"servers": {"one": echo(greeting="${env:GYM_TEST_GREETING,hello}"),
                                      "two": {"kind": "resources", "entrypoint": "gym_test_doubles"}}})
    with launch(config, overrides=["servers.one.level=3"]) as stack:
        registry = stack.registry_url
        listed = httpx.get(f"{registry}/servers").json()
        assert sorted(s["name"] for s in listed) == ["one", "two"]
        one = httpx.get(f"{registry}/servers/one").json()
        assert one == {"name": "one", "kind": "resources", "url": stack.url("one"), "pid": stack.servers["one"].pid,
                       "restarts": 0}
        assert httpx.get(f"{registry}/servers/nope").status_code == 404
        seen = httpx.get(f"{stack.url('one')}/config").json()
        assert (seen["greeting"], seen["level"]) == ("hello", 3)  # extra fields reach the server
        assert httpx.get(f"{stack.url('two')}/health").json()["name"] == "two"
        processes = [s.process for s in stack.servers.values()]
        assert "NAME" in stack.table() and stack.url("two") in stack.table()
    assert all(p.returncode == 0 for p in processes), "SIGTERM should be a clean, deregistered exit"
    assert all(gone(p.pid) for p in processes)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{registry}/health", timeout=1)
    logs = capsys.readouterr().err
    assert "one | serving resources server 'one' at http://127.0.0.1:" in logs  # each line names its server
    assert "two | INFO:     Finished server process" in logs


@pytest.mark.parametrize("broken, expected", [
    ({"kind": "resources", "entrypoint": "gym_test_dies"}, "boom at import"),
    ({"kind": "resources", "entrypoint": "gym_test_exits"}, "exiting on purpose"),
    (echo(fail_startup=True), "ValueError: cannot open the model"),
])
def test_server_dying_at_start_fails_launch_with_its_log(doubles: Path, broken: dict, expected: str) -> None:
    pid_file = doubles / "healthy.pid"
    config = load_config({"servers": {"healthy": echo(pid_file=str(pid_file)), "broken": broken}})
    with pytest.raises(LaunchError) as info:
        with launch(config, echo_logs=False):
            pytest.fail("launch must not yield when a server dies at start")
    message = str(info.value)
    assert "server 'broken' exited with code" in message and expected in message
    if pid_file.exists():  # the healthy sibling may not have got that far; if it did, it is stopped
        assert gone(pid_from(pid_file))


def test_start_timeout_stops_everything(doubles: Path) -> None:
    pid_file = doubles / "hang.pid"
    config = load_config({"servers": {"slow": echo(hang=True, pid_file=str(pid_file))}})
    with pytest.raises(LaunchError, match="timed out after 2s waiting for slow"):
        with launch(config, start_timeout=2, stop_grace=0.5, echo_logs=False):
            pass
    assert gone(pid_from(pid_file))


def test_wait_shutdown_request_and_exception_stop_everything(doubles: Path) -> None:
    config = load_config({"servers": {"stubborn": echo(ignore_sigterm=True), "b": echo(restart={"when": "never"})}})
    with pytest.raises(RuntimeError, match="user code failed"):
        with launch(config, stop_grace=0.5, echo_logs=False) as stack:
            os.kill(stack.servers["b"].pid, signal.SIGKILL)
            assert stack.wait(poll_s=0.05).name == "b"
            httpx.post(f"{stack.registry_url}/shutdown", json={}, headers=stack.auth.headers()).raise_for_status()
            assert stack.wait(poll_s=0.05) is None
            stubborn = stack.servers["stubborn"].process
            raise RuntimeError("user code failed")
    assert stubborn.returncode == -signal.SIGKILL  # it ignored SIGTERM, so the grace period ran out
    assert gone(stubborn.pid)


def test_registry_port_in_use_is_a_clear_error() -> None:
    first = RegistryService(Registry(), port=0)
    try:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="is another `gym up` running"):
            RegistryService(Registry(), port=port)
    finally:
        first.stop()


def test_server_class_resolution(doubles: Path) -> None:
    assert default_entrypoint({"kind": "resources", "env": "weather"}) == "environments.weather.app"
    assert default_entrypoint({"kind": "agent", "impl": "tool_calling"}) == "servers.agents.tool_calling"
    assert default_entrypoint({"kind": "policy"}) == "servers.policy.server:PolicyServer"
    assert load_server_class("gym_test_doubles").__name__ == "EchoServerForTests"
    with pytest.raises(ServeError, match="exactly one GymServer subclass"):
        load_server_class("json")
    with pytest.raises(ServeError, match="not a subclass"):
        load_server_class("json:dumps")
    with pytest.raises(ServeError, match="has no attribute 'Nope'"):
        load_server_class("gym_test_doubles:Nope")
    with pytest.raises(ServeError, match="is a resources server but the config says kind: agent"):
        build_server("x", {"kind": "agent", "entrypoint": "gym_test_doubles"})
    assert build_server("x", echo(level=2)).config.level == 2
