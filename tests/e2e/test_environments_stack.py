"""End to end: every environment of issue 8 served as a real process, the scripted policy running episodes
against each through the tool-calling agent (one stack, one agent per environment)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from gym_core.client import close_client
from gym_core.launcher import launch
from rollout.collect import collect, read_rows
from tests.processes import gone

ROOT = Path(__file__).parents[2]
ENVIRONMENTS = ["math", "code", "instruction_following", "structured_output", "multi_step_tools", "calendar",
                "prompt_injection"]
ROWS_EACH = 2


def stack_config(tmp_path: Path) -> Path:
    """One launch config: the scripted policy, each environment's own config.yaml, one agent per environment."""
    servers = {"policy": {"kind": "policy", "engine": "scripted"}}
    for env in ENVIRONMENTS:
        servers[f"agent_{env}"] = {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": env,
                                   "max_steps": 4, "episode_timeout_s": 120}
    config = {"include": [str(ROOT / "environments" / env / "config.yaml") for env in ENVIRONMENTS],
              "servers": servers}
    path = tmp_path / "envs.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def collect_all(stack, tmp_path: Path) -> dict[str, list[dict]]:
    """ROWS_EACH example rows of every environment through its agent, all at once."""
    async def one(env: str) -> list[dict]:
        output = tmp_path / f"{env}.jsonl"
        rows = read_rows(ROOT / "environments" / env / "data" / "example.jsonl", limit=ROWS_EACH)
        summary = await collect(stack.url(f"agent_{env}"), rows, output, agent_name=f"agent_{env}",
                                concurrency=4, timeout=120, progress=False)
        assert summary.failures == 0, summary.failures_output.read_text()[:2000]
        return [json.loads(line) for line in output.read_text().splitlines()]
    try:
        return dict(zip(ENVIRONMENTS, await asyncio.gather(*(one(env) for env in ENVIRONMENTS))))
    finally:
        await close_client()


@pytest.mark.timeout(300)
def test_the_scripted_policy_runs_an_episode_in_every_environment(tmp_path: Path) -> None:
    with launch(stack_config(tmp_path), registry_port=0, echo_logs=False) as stack:
        pids = [server.pid for server in stack.servers.values()]
        results = asyncio.run(collect_all(stack, tmp_path))
    for env, rows in results.items():
        assert len(rows) == ROWS_EACH, env
        for row in rows:
            assert 0.0 <= row["reward"] <= 1.0, (env, row["reward"])
            assert row["response"]["output"][-1]["type"] == "message", env
    tool_envs = ["multi_step_tools", "calendar", "prompt_injection"]
    for env in tool_envs:  # the scripted policy calls one tool, then answers from its result
        assert any(item["type"] == "function_call" for row in results[env] for item in row["response"]["output"])
    assert "sandbox_isolation" in results["code"][0] and "strict" in results["instruction_following"][0]
    assert all(gone(pid) for pid in pids)
