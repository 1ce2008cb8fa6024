"""End-of-collection metrics: the agent's /aggregate_metrics over the whole output, its file, and its failure."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from gym_core.cli import main as gym
from gym_core.client import close_client
from gym_core.demo import main as demo
from gym_core.launcher import Stack
from rollout.collect import CollectionSummary, collect
from rollout.metrics import metrics_path, strip_row

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.yaml"


def row(**fields: object) -> dict:
    return {"responses_create_params": {"input": "hi"}, **fields}


def last_aggregated(stack: Stack) -> list[dict]:
    return httpx.get(stack.url("fake") + "/stats").json()["aggregated"]


async def run(stack: Stack, rows: list[dict], output: Path, **kwargs: object) -> CollectionSummary:
    try:
        return await collect(stack.url("fake"), rows, output, agent_name="fake", num_repeats=2, concurrency=4,
                             timeout=5.0, progress=False, **kwargs)
    finally:
        await close_client()


def test_strip_row_keeps_usage_only() -> None:
    full = {"reward": 1.0, "responses_create_params": {"input": "x"}, "_ng_task_index": 0,
            "response": {"output": [{"type": "message"}], "usage": {"input_tokens": 3}}}
    assert strip_row(full) == {"reward": 1.0, "_ng_task_index": 0, "response": {"usage": {"input_tokens": 3}}}
    assert strip_row({"reward": 0.0, "response": {"output": []}}) == {"reward": 0.0}


async def test_metrics_file_has_nemo_gym_shape(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "rollouts.jsonl"
    summary = await run(stack, [row(reward_value=1.0), row(reward_value=0.0), row(behaviour="error")], output)
    (entry,) = json.loads(metrics_path(output).read_text())
    assert set(entry) == {"agent_ref", "agent_metrics", "key_metrics", "group_level_metrics"}
    assert entry["agent_ref"] == {"type": "responses_api_agents", "name": "fake"}
    assert entry["agent_metrics"]["count"] == 4 and entry["agent_metrics"]["mean/reward"] == 0.5  # failures excluded
    assert entry["key_metrics"]["pass@2/reward"] == 0.5 and len(entry["group_level_metrics"]) == 2
    assert summary.metrics_output == metrics_path(output) and summary.key_metrics == entry["key_metrics"]
    assert "pass@2/reward=0.5000" in summary.line() and "mean/reward=0.5000" in summary.line()
    assert not any("responses_create_params" in r or "response" in r for r in last_aggregated(stack))


async def test_resumed_collection_aggregates_the_whole_output(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "rollouts.jsonl"
    await run(stack, [row(), row()], output)
    summary = await run(stack, [row(), row(), row(reward_value=0.0)], output, resume=True)
    assert summary.count == 2 and summary.resumed == 4
    (entry,) = json.loads(metrics_path(output).read_text())
    assert entry["agent_metrics"]["count"] == 6 and len(last_aggregated(stack)) == 6


async def test_failing_aggregation_warns_and_keeps_the_rollouts(stack: Stack, tmp_path: Path, caplog) -> None:
    output = tmp_path / "rollouts.jsonl"
    with caplog.at_level(logging.WARNING, logger="rollout.metrics"):
        summary = await run(stack, [row(fail_aggregate=True)], output)
    assert summary.count == 2 and summary.metrics is None and summary.metrics_output is None
    assert not metrics_path(output).exists() and len(output.read_text().splitlines()) == 2
    assert "no metrics" in summary.metrics_errors["fake"]  # reported, never a silently missing file
    assert "/aggregate_metrics" in caplog.text and "no metrics" in caplog.text


async def test_aggregation_can_be_disabled(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "rollouts.jsonl"
    summary = await run(stack, [row()], output, aggregate_metrics=False)
    assert summary.count == 2 and summary.metrics is None and not metrics_path(output).exists()


def test_gym_rollout_prints_key_metrics(stack: Stack, tmp_path: Path, registry_env: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row()) + "\n")
    output = tmp_path / "out.jsonl"
    args = ["rollout", "--agent", "fake", "--input", str(data), "--output", str(output), "--num-repeats", "2",
            "--registry", stack.registry_url, "--no-progress"]
    assert gym(args) == 0
    printed = capsys.readouterr().out
    assert "pass@2/reward=1.0000" in printed and str(metrics_path(output)) in printed
    metrics_path(output).unlink()
    assert gym([*args, "--no-aggregate"]) == 0
    assert "pass@" not in capsys.readouterr().out and not metrics_path(output).exists()


@pytest.mark.timeout(120)
def test_demo_on_the_quickstart_writes_weather_metrics(tmp_path: Path, registry_env: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "demo" / "rollouts.jsonl"
    assert demo([str(QUICKSTART), "--rows", "3", "--repeats", "2", "--output", str(output)]) == 0
    (entry,) = json.loads(metrics_path(output).read_text())
    assert entry["agent_metrics"]["mean/reward"] == 1.0 and entry["agent_metrics"]["count"] == 6
    assert entry["key_metrics"]["pass@2/reward"] == 1.0
    assert f"key metrics: mean/reward=1.0000 pass@1/reward=1.0000 pass@2/reward=1.0000 -> {metrics_path(output)}" \
        in capsys.readouterr().out
