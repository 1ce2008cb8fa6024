"""End to end: `examples/native.yaml` as real processes (our torch model on builtin:tiny as the policy),
a handful of weather rollouts through the tool-calling agent, and the token fields in every episode."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from gym_core.client import close_client
from gym_core.launcher import launch
from rollout.collect import CollectionSummary, collect, read_rows
from tests.e2e.test_quickstart import DATA, ROOT

NATIVE = ROOT / "examples" / "native.yaml"
MODEL_ITEMS = ("message", "reasoning", "function_call")


async def collect_rollouts(agent_url: str, output: Path) -> CollectionSummary:
    """4 tasks x 2 repeats through the agent."""
    try:
        return await collect(agent_url, read_rows(DATA, limit=4), output, agent_name="agent", num_repeats=2,
                             concurrency=8, timeout=60, progress=False)
    finally:
        await close_client()


@pytest.mark.timeout(90)
def test_native_policy_rollouts_carry_token_fields(tmp_path: Path) -> None:
    output = tmp_path / "rollouts.jsonl"
    with launch(NATIVE, registry_port=0, echo_logs=False) as stack:
        summary = asyncio.run(collect_rollouts(stack.url("agent"), output))
    assert (summary.count, summary.failures) == (8, 0), summary.failures_output.read_text()[:2000]

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(row["reward"], float) for row in rows)
    for row in rows:
        items = row["response"]["output"]
        assert all("generation_token_ids" not in item for item in items if item["type"] == "function_call_output")
        calls = [item for item in items if item["type"] in MODEL_ITEMS and "generation_token_ids" in item]
        assert calls, f"no model output item carries token fields: {[item['type'] for item in items]}"
        for call in calls:
            assert call["prompt_token_ids"] and len(call["generation_token_ids"]) == len(call["generation_log_probs"])
        # Each model call's prompt extends the previous call's prompt + generation, token for token.
        for before, after in itertools.pairwise(calls):
            seen = before["prompt_token_ids"] + before["generation_token_ids"]
            assert after["prompt_token_ids"][:len(seen)] == seen
