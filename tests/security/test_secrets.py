"""Secrets stay secret (issue 10, finding 8), checked on real processes: the policy's `api_key` and the stack token
are in no server's or child's `/proc/<pid>/environ` or command line, nor in logs, `gym status` or the registry; a
literal secret given as a command-line override is refused before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from gym_core.cli import main as gym
from gym_core.config import load_config
from gym_core.launcher import launch

API_KEY = "sk-test-4b1d2c9e7f"

# Test double: a resources server that starts a child process (as a sandbox would) and reports both pids.
SPAWNER = '''
import subprocess, sys
from servers.resources import ResourcesServer


class SpawnsAChildForTests(ResourcesServer):
    """Test double: starts a long-sleeping child at startup, like an environment's sandbox."""

    async def startup(self) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(self.config.pid_file, "w").write(str(self.child.pid))

    async def shutdown(self) -> None:
        self.child.kill()
        self.child.wait()
'''


def _proc(pid: int, what: str) -> bytes:
    return Path(f"/proc/{pid}/{what}").read_bytes()


@pytest.fixture
def spawner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "gym_test_spawner.py").write_text(SPAWNER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def test_secrets_reach_no_environment_command_line_log_or_listing(spawner: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GYM_TEST_POLICY_KEY", API_KEY)
    config = load_config({"servers": {
        "policy": {"kind": "policy", "engine": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                   "api_key": "${env:GYM_TEST_POLICY_KEY}"},
        "sandbox": {"kind": "resources", "entrypoint": "gym_test_spawner", "pid_file": str(spawner / "child.pid")},
    }})
    with launch(config, echo_logs=False) as stack:
        token = stack.auth.token
        assert token and len(token) >= 32
        pids = [s.pid for s in stack.servers.values()] + [int((spawner / "child.pid").read_text())]
        for pid in pids:
            environ, cmdline = _proc(pid, "environ"), _proc(pid, "cmdline")
            for secret in (API_KEY, token):
                assert secret.encode() not in environ and secret.encode() not in cmdline, pid
            assert b"GYM_AUTH_TOKEN_FILE=" in environ  # the token's path, not the token
        listing = httpx.get(f"{stack.registry_url}/servers", trust_env=False).text
        assert gym(["status", "--registry", stack.registry_url]) == 0
        shown = capsys.readouterr()
        logs = "\n".join(line for s in stack.servers.values() for line in s.log)
    for text in (listing, shown.out, shown.err, logs):
        assert API_KEY not in text and token not in text


def test_a_literal_secret_override_is_refused_before_anything_starts(capsys) -> None:
    code = gym(["up", "examples/quickstart.yaml", f"servers.policy.api_key={API_KEY}", "--registry-port", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "servers.policy.api_key" in err and "${env:" in err and API_KEY not in err
    code = gym(["rollout", "--config", "examples/quickstart.yaml", "--agent", "agent", "--input", "x.jsonl",
                "--output", "y.jsonl", "auth_token=hunter2-literal"])
    assert code == 1 and "auth_token" in capsys.readouterr().err


def test_secret_fields_stay_masked_in_reprs_and_dumps() -> None:
    from gym_core.server import ServerConfig
    from servers.policy.server import PolicyServer

    config = load_config({"auth_token": "stack-secret-xyz", "servers": {"p": {"kind": "policy"}}})
    assert "stack-secret-xyz" not in repr(config) + str(config.model_dump(mode="json"))
    server = PolicyServer("p", {"engine": "scripted", "api_key": API_KEY, "session_secret": "ss-123"})
    assert API_KEY not in repr(server.config) and "ss-123" not in repr(ServerConfig(session_secret="ss-123"))
