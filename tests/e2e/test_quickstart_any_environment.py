"""`examples/quickstart.yaml` pointed at every environment by its one `environment:` value, as real processes.

Each environment's example split is collected with the scripted policy (a few seconds each). That the config
resolves for every environment is checked in tests/gym_core/test_datasets.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gym_core.client import close_client
from gym_core.datasets import split_rows
from gym_core.launcher import launch
from rollout.collect import CollectionSummary, collect, read_rows
from tests.processes import gone

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
ENVIRONMENTS = sorted(path.parent.name for path in (ROOT / "environments").glob("*/app.py"))


async def collect_once(agent_url: str, rows: Path, output: Path) -> CollectionSummary:
    try:
        return await collect(agent_url, read_rows(rows), output, agent_name="agent", concurrency=8, timeout=120,
                             progress=False)
    finally:
        await close_client()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_quickstart_runs_any_environment(env: str, tmp_path: Path) -> None:
    with launch(QUICKSTART, [f"environment={env}"], registry_port=0, echo_logs=False) as stack:
        [rows] = split_rows(stack.config, "agent", "example")  # the environment's own example split
        summary = asyncio.run(collect_once(stack.url("agent"), rows, tmp_path / "rollouts.jsonl"))
        pids = [server.pid for server in stack.servers.values()]
    assert summary.failures == 0, summary.failures_output.read_text()[:2000]
    assert summary.count == len(rows.read_text().splitlines()) and summary.key_metrics
    assert all(gone(pid) for pid in pids)
