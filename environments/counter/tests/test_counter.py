"""The counter environment: the DESIGN.md example works as a whole environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.counter.app import Counter
from gym_core.protocol import TaskRow

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
APP = Path(__file__).parents[1] / "app.py"


@pytest.fixture
def client():
    with TestClient(Counter("counter", {}).build_app()) as c:  # its cookie jar carries the rollout's session
        yield c


def verify(client: TestClient, row: dict) -> dict:
    return client.post("/verify", json={**row, "response": {"output": []}}).json()


@pytest.mark.parametrize("steps,target,reward", [
    ([3], 3, 1.0),
    ([1, 1, 1], 3, 1.0),
    ([5, -7], -2, 1.0),
    ([2], 3, 0.0),
    ([], 0, 0.0),   # never counted: no count is not a count of 0
    ([4, -4], 0, 1.0),
])
def test_increment_then_verify(client, steps, target, reward):
    row = {**ROWS[0], "target": target}
    client.post("/seed_session", json=row)
    for by in steps:
        assert client.post("/increment", json={"by": by}).status_code == 200
    assert verify(client, row)["reward"] == reward


def test_sessions_are_per_rollout(client):
    client.post("/increment", json={"by": 3})
    other_rollout = TestClient(client.app)  # no session yet: the server issues it its own
    assert other_rollout.post("/increment", json={"by": 1}).json() == {"count": 1}
    assert client.post("/increment", json={"by": 1}).json() == {"count": 4}


def test_bad_arguments_are_a_422(client):
    assert client.post("/increment", json={"by": "many"}).status_code == 422


def test_app_is_as_short_as_the_design_says():
    # The DESIGN.md example plus its row model (5 lines), then `known_attempts` for `gym env test` (a correct and
    # an incorrect attempt).
    design, _, kit = APP.read_text().partition("    def known_attempts")
    code = [line for line in design.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 21 and len(kit.strip().splitlines()) <= 4


def test_example_rows_are_valid():
    assert len(ROWS) >= 5
    for row in ROWS:
        task = TaskRow.model_validate(row)
        assert isinstance(task.extra["target"], int)
        assert [t.model_dump(exclude_unset=True) for t in task.responses_create_params.tools] == \
            [Counter.tools["increment"].schema]


def test_gym_env_test_runs_this_folder():
    # A light conformance run (tests/environments runs the full one); the pytest row runs only this file's test.
    done = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "test", "counter", "--rollouts", "50",
                           "-k", "example_rows"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
