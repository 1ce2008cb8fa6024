"""Bad data is the row's fault (finding 7), in every environment: its first example row without each required
field, and with each field of the wrong JSON type, is a 422 `invalid_row` naming the field from /seed_session
and /verify, never a 5xx; the row as shipped, or without an optional field, is served.

Each environment runs in-process behind the conformance check's harness (servers/kit/harness.py), so a
5xx fails as a CheckFailure.
"""

from __future__ import annotations

from typing import Any

import pytest

from servers.kit.catalog import load_environment, read_example_rows
from servers.kit.check import row_problem
from servers.kit.harness import Harness, assistant_message, harness
from servers.resources import Attempt
from tests.environments.test_conformance import ENVIRONMENTS

# Fields that take any JSON value, so no value is of the wrong type.
ANY_JSON = {("structured_output", "expected")}


def mistyped(value: Any) -> Any:
    """A value of another JSON kind: a dict where a list was, a list where anything else was."""
    return {"not": "a list"} if isinstance(value, list) else ["not", value]


async def assert_refused(h: Harness, row: dict[str, Any], field: str) -> None:
    episode = {**row, "response": {"output": [assistant_message("an answer")]}}
    for path, body in (("/seed_session", row), ("/verify", episode)):
        reply = await h.post(path, body, None)
        error = reply.json()["error"]
        assert reply.status_code == 422 and error["type"] == "invalid_row", (path, reply.status_code, reply.text)
        assert field in error["message"], (path, error["message"])


@pytest.mark.parametrize("name", ENVIRONMENTS)
async def test_a_bad_row_is_a_422_invalid_row_naming_the_field(name: str) -> None:
    env = load_environment(name)
    model = env.server_class.row_model
    assert model is not None, f"{name} declares no row_model"
    row = read_example_rows(env.example_path)[0]
    declared = {info.alias or key: info for key, info in model.model_fields.items()}
    async with harness(env) as h:
        assert "reward" in await h.play(row, Attempt())  # the row as shipped: seeded and verified (200)
        for field, info in declared.items():
            if field not in row:
                assert not info.is_required(), f"{name}: the first example row lacks {field!r}"
                continue
            without = {k: v for k, v in row.items() if k != field}
            if row_problem(model, without) is not None:  # a field optional alone may be needed: code's tests
                await assert_refused(h, without, field)
            else:  # optional
                assert "reward" in await h.play(without, Attempt())
            if (name, field) not in ANY_JSON:
                await assert_refused(h, {**row, field: mistyped(row[field])}, field)
