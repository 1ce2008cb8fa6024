"""`examples/quickstart.yaml` pointed at every environment by its one `environment:` value, as real processes.

Each environment's example split is collected with the scripted policy (a few seconds each), plus one row
missing a required field, which must end in the failures sidecar as the row's fault (`invalid_row`, naming
the field, not retried). That the config resolves for every environment is checked in
tests/gym_core/test_datasets.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gym_core.client import close_client
from gym_core.datasets import split_rows
from gym_core.launcher import launch
from rollout.collect import CollectionSummary, collect, read_rows
from servers.kit.catalog import load_environment
from servers.kit.check import row_problem
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
        good = list(read_rows(rows))
        field, bad = without_a_required_field(env, good[0])
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("".join(json.dumps(row) + "\n" for row in [*good, bad]))
        summary = asyncio.run(collect_once(stack.url("agent"), tasks, tmp_path / "rollouts.jsonl"))
        pids = [server.pid for server in stack.servers.values()]
    assert summary.count == len(good) and summary.key_metrics
    [failure] = [json.loads(line) for line in summary.failures_output.read_text().splitlines()]
    assert failure["_ng_task_index"] == len(good) and failure["_ng_failure_class"] == "invalid_row", failure
    assert failure["_ng_failure_terminal"] is True and failure["error"]["status"] == 422
    assert field in failure["error"]["message"], failure["error"]
    assert all(gone(pid) for pid in pids)


def without_a_required_field(env: str, row: dict) -> tuple[str, dict]:
    """The row without the first field its environment's row model cannot do without."""
    model = load_environment(env).server_class.row_model
    for field in row:
        broken = {k: v for k, v in row.items() if k != field}
        if field != "responses_create_params" and row_problem(model, broken) is not None:
            return field, broken
    raise AssertionError(f"{env}: no field of its first example row is required")
