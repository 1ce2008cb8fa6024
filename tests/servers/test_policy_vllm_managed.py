"""`engine: vllm` on a CPU: the policy server starts a fake `vllm` executable (tests/servers/fake_vllm.py) on PATH.

Checked: the command line Nemotron 3 Nano needs, the API key kept off it, the wait for health, requests proxied
through it, its log lines under the policy server's, a crash or a hang reported with vLLM's last lines within
the start timeout, and the whole process group gone after stop, from the engine and from `gym up`'s launcher.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from gym_core.client import get_client
from gym_core.launcher import launch
from servers.policy.engines.base import EngineError, create_engine
from servers.policy.engines.vllm import VLLMEngineConfig, vllm_command
from servers.policy.server import PolicyServer
from tests.processes import gone

FAKE = Path(__file__).with_name("fake_vllm.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch) -> Path:
    """A `vllm` on PATH that runs fake_vllm.py; returns the file it records each start in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable = bin_dir / "vllm"
    executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    executable.chmod(executable.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "starts.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return record


def is_gone(pid: int, within_s: float = 10.0) -> bool:
    """True once no process has this pid (an orphan is reaped by init a moment after it dies)."""
    deadline = time.monotonic() + within_s
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


def starts(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_the_command_line_has_the_flags_nemotron_3_nano_needs():
    config = VLLMEngineConfig(model="/ckpt/nano", weight_transfer="disk", api_key="sk-x",
                              logits_processors=["budget:ThinkingBudgetLogitsProcessor"], extra_args=["--tp", "2"])
    command = vllm_command(config, 8123)
    assert command[:7] == ["vllm", "serve", "/ckpt/nano", "--host", "127.0.0.1", "--port", "8123"]
    line = " ".join(command)
    for flag in ("--trust-remote-code", "--enable-auto-tool-choice --tool-call-parser qwen3_coder",
                 "--reasoning-parser nemotron_v3", "--mamba-ssm-cache-dtype float32", "--max-model-len 262144",
                 "--weight-transfer-config {\"backend\": \"disk\"}",
                 "--logits-processors budget:ThinkingBudgetLogitsProcessor"):
        assert flag in line
    assert command[-2:] == ["--tp", "2"] and "sk-x" not in line
    plain = vllm_command(VLLMEngineConfig(model="m", reasoning_parser=None, max_model_len=None,
                                          reasoning_parser_plugin=None), 1)
    assert "--reasoning-parser" not in plain and "--max-model-len" not in plain


async def test_the_policy_server_starts_vllm_proxies_to_it_and_stops_its_group(fake_vllm, serve, capfd):
    config = {"engine": "vllm", "model": "/ckpt/nano", "api_key": "sk-secret", "weight_transfer": "disk",
              "start_timeout_s": 60}
    server = PolicyServer("policy", config)
    policy = await serve(server.build_app())  # startup launches the fake and waits for its health
    [started] = starts(fake_vllm)
    assert started["argv"][:2] == ["serve", "/ckpt/nano"] and "--reasoning-parser" in started["argv"]
    assert started["dev_mode"] == "1" and started["api_key"] and "sk-secret" not in " ".join(started["argv"])
    assert started["pgid"] == started["pid"]  # its own process group
    reply = await get_client().post(policy, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]})
    assert reply.status_code == 200, reply.text  # through the fake, with the key it requires
    assert reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert reply.json()["model"] == "/ckpt/nano"
    await server.engine.close()
    assert is_gone(started["pid"]) and is_gone(started["child"])
    out = capfd.readouterr().out
    assert "[vllm] INFO Started server process" in out and "[vllm] starting: vllm serve /ckpt/nano" in out


async def test_a_vllm_that_crashes_or_hangs_fails_the_start_with_its_log(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")
    engine = create_engine("vllm", {"model": "m"}, "policy")
    with pytest.raises(EngineError, match=r"(?s)exited with code 1 while starting.*max_model_len is too large"):
        await engine.start()
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    engine = create_engine("vllm", {"model": "m", "start_timeout_s": 1.5, "stop_timeout_s": 0.5}, "policy")
    with pytest.raises(EngineError, match=r"(?s)within 1.5 s.*--start-timeout.*vLLM API server version"):
        await engine.start()
    hung = starts(fake_vllm)[-1]
    assert is_gone(hung["pid"]) and is_gone(hung["child"])  # SIGTERM ignored: SIGKILL ended the group
    assert engine.process is None


async def test_a_missing_vllm_says_how_to_install_it(monkeypatch):
    engine = create_engine("vllm", {"model": "m", "command": ["no-such-vllm-here", "serve"]}, "policy")
    with pytest.raises(EngineError, match=r"not on PATH.*gym-rl\[vllm\]"):
        await engine.start()


def test_gym_up_with_engine_vllm_logs_with_the_stack_and_leaves_no_process(fake_vllm):
    overrides = ["servers.policy.engine=vllm", "servers.policy.model=/ckpt/nano"]
    with launch(ROOT / "examples/quickstart.yaml", overrides, echo_logs=False) as stack:
        [started] = starts(fake_vllm)
        row = json.loads((ROOT / "environments/weather/data/example.jsonl").read_text().splitlines()[0])
        reply = httpx.post(stack.url("agent") + "/run", json=row, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["reward"] == 1.0  # the fake answered the tool call, then with the tool's result
        assert any(line.startswith("[vllm] INFO Started server process") for line in stack.servers["policy"].log)
    assert is_gone(started["pid"]) and is_gone(started["child"])
