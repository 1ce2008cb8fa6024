"""`make demo`: the fine-tuned tiny model (builtin:tiny-sft, native engine) acts in the weather environment through
real processes and earns reward; the demo shows one episode and stops every process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gym_core.demo import main as demo

ROOT = Path(__file__).parents[2]


@pytest.mark.timeout(300)
def test_demo_shows_the_fine_tuned_model_earning_reward(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "rollouts.jsonl"
    assert demo([str(ROOT / "examples" / "train_tiny" / "weather.yaml"), "--output", str(output)]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 20  # 5 example rows x 4 repeats, none failed
    calls = [item for row in rows for item in row["response"]["output"] if item.get("type") == "function_call"]
    assert sum(call["name"] == "get_weather" for call in calls) >= len(rows) // 2  # it uses the tool
    assert sum(row["reward"] for row in rows) >= 1  # and earns reward (about a third of the answers are complete)
    printed = capsys.readouterr().out
    assert "tool call: get_weather(" in printed and "reward:" in printed and "stopped 3 server processes" in printed
    # seeded (default 0): a rerun samples the same episodes
    again = tmp_path / "again.jsonl"
    assert demo([str(ROOT / "examples" / "train_tiny" / "weather.yaml"), "--output", str(again)]) == 0
    assert episodes(rows) == episodes([json.loads(line) for line in again.read_text().splitlines()])


def episodes(rows: list[dict]) -> dict[tuple[int, int], tuple[list[list[int]], float]]:
    """Each rollout's generated token ids (every model call) and reward, by (task, repeat)."""
    return {(r["_ng_task_index"], r["_ng_rollout_index"]): (
        [item["generation_token_ids"] for item in r["response"]["output"] if "generation_token_ids" in item],
        r["reward"]) for r in rows}
