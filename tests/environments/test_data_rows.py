"""Every shipped data row validates against the official `openai` SDK's Responses request types.

NeMo Gym's models derive from these types, so a row they reject cannot run there. The check is the one
`gym env test` runs on example rows (servers/kit/openai_types.py); here it covers every data file, generated
splits included, and environments added later.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servers.kit.openai_types import check_request

ROOT = Path(__file__).parents[2]
DATA_FILES = sorted((ROOT / "environments").glob("*/data/*.jsonl"))
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}, "strict": True}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(ROOT / "environments")))
def test_rows_validate_against_the_openai_sdk(path: Path) -> None:
    rows = _rows(path)
    assert rows, f"{path} has no rows"
    for number, row in enumerate(rows, 1):
        try:
            check_request(row["responses_create_params"])
        except ValueError as exc:  # pydantic's ValidationError is one
            raise AssertionError(f"{path.relative_to(ROOT)} line {number}: {exc}") from exc


def test_every_environment_ships_at_least_five_example_rows() -> None:
    examples = sorted((ROOT / "environments").glob("*/data/example.jsonl"))
    assert len(examples) == len(list((ROOT / "environments").glob("*/app.py")))
    for path in examples:
        assert len(_rows(path)) >= 5, path


@pytest.mark.parametrize("tool,complaint", [
    ({key: value for key, value in TOOL.items() if key != "strict"}, "strict"),   # NeMo Gym requires it
    ({**TOOL, "stirct": True}, "stirct"),                                           # a TypedDict would ignore it
])
def test_the_check_catches_a_bad_function_tool(tool: dict, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        check_request({"input": "hi", "tools": [tool]})


def test_the_check_reads_every_input_item() -> None:
    check_request({"input": [{"role": "user", "content": "hi"}], "tools": [TOOL]})
    with pytest.raises(ValueError, match="input"):
        check_request({"input": [{"role": "user", "content": 5}]})
