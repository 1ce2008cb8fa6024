"""End to end: `examples/quickstart.yaml` as real processes, 100 rollouts at concurrency 32, then stop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gym_core.client import close_client, get_client
from gym_core.launcher import launch
from rollout.collect import collect, read_rows
from tests.processes import gone

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DATA = ROOT / "environments" / "weather" / "data" / "example.jsonl"


async def collect_and_aggregate(agent_url: str, output: Path) -> dict:
    """5 tasks x 20 repeats through the agent, then the environment's metrics over the results."""
    try:
        summary = await collect(agent_url, read_rows(DATA, limit=5), output, agent_name="agent",
                                num_repeats=20, concurrency=32, timeout=60, progress=False)
        assert (summary.count, summary.failures) == (100, 0), summary.failures_output.read_text()[:2000]
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        stripped = [{k: v for k, v in row.items() if k not in ("response", "responses_create_params")} for row in rows]
        return (await get_client().post_json(agent_url, "/aggregate_metrics", {"verify_responses": stripped}))
    finally:
        await close_client()


@pytest.mark.timeout(120)
def test_quickstart_collects_100_rollouts(tmp_path: Path) -> None:
    output = tmp_path / "rollouts.jsonl"
    launched_pids: list[int] = []
    with launch(QUICKSTART, registry_port=0, echo_logs=False) as stack:
        launched_pids = [server.pid for server in stack.servers.values()]
        metrics = asyncio.run(collect_and_aggregate(stack.url("agent"), output))

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 100
    assert all(isinstance(row["reward"], float) for row in rows)
    assert {row["_ng_task_index"] for row in rows} == set(range(5))
    assert all(row["response"]["output"][-1]["type"] == "message" for row in rows)
    # The scripted policy solves the weather task, so rewards are all 1 (a regression here is a real bug).
    assert metrics["agent_metrics"]["mean/reward"] == 1.0 and metrics["agent_metrics"]["count"] == 100
    assert metrics["key_metrics"]["pass@20/reward"] == 1.0
    assert len(metrics["group_level_metrics"]) == 5
    assert all(gone(pid) for pid in launched_pids)  # every server process is gone
