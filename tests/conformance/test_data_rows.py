"""Every shipped task row validates as the Responses create params of the official `openai` SDK.

The glob covers environments added later. NeMo Gym's servers parse rows with models derived from these types,
so a row that fails here (e.g. a function tool without `strict`) is one NeMo Gym rejects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance.sdk import check_create_params

ROOT = Path(__file__).resolve().parents[2]
DATA_FILES = sorted(ROOT.glob("environments/*/data/*.jsonl"))


def test_the_environments_ship_data() -> None:
    assert len(DATA_FILES) >= 4


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_row_is_valid_responses_create_params(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert rows, f"{path} has no rows"
    for number, row in enumerate(rows, 1):
        try:
            params = check_create_params(row["responses_create_params"])
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(ROOT)} line {number}: {exc}") from exc
        for tool in params.get("tools", []):
            if tool["type"] == "function":
                assert isinstance(tool["strict"], bool)


def test_a_function_tool_without_strict_is_caught() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    with pytest.raises(Exception, match="strict"):
        check_create_params({"input": "hi", "tools": [tool]})
    with pytest.raises(Exception, match="input"):
        check_create_params({"input": [{"role": "user", "content": 5}]})
