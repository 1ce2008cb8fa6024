"""multi_step_tools: the lookup tools, the submission rule, rewards for right / wrong / text-only answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.multi_step_tools.app import MultiStepTools, answers_equal
from environments.multi_step_tools.generate import make_row, tools
from environments.synthetic import make_rows
from gym_core.protocol import TaskRow
from tests.environments.adversarial import assert_tools_survive, assert_verify_survives
from tests.environments.sessions import KEEP_SESSIONS, cookieless_client, seed

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
TOOLS = ("find_employee", "get_employee", "get_department", "submit_answer")
TEXT = {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]}]}


@pytest.fixture
def client():
    with TestClient(MultiStepTools("mst", KEEP_SESSIONS).build_app()) as c:
        yield c


def solve(client, row: dict) -> object:
    """Answer the row by the lookups a good agent makes; returns the answer it found."""
    question = row["responses_create_params"]["input"][-1]["content"]
    names = [e["name"] for e in row["database"]["employees"] if e["name"] in question]
    names.sort(key=question.index)
    departments = {}
    for name in names:
        person = client.post("/find_employee", json={"name": name.upper()}).json()   # any case works
        departments[person["department_id"]] = client.post(
            "/get_department", json={"department_id": person["department_id"]}).json()
    first = departments[client.post("/find_employee", json={"name": names[0]}).json()["department_id"]]
    if row["question_kind"] == "budget":
        return first["budget"]
    if row["question_kind"] == "manager":
        return client.post("/get_employee", json={"employee_id": first["manager_id"]}).json()["name"]
    return sum(d["budget"] for d in departments.values())


@pytest.mark.parametrize("index", range(len(ROWS)))
def test_a_correct_agent_scores_one(client, index):
    row = ROWS[index]
    client.post("/seed_session", json=row)
    found = solve(client, row)
    assert found == row["expected_answer"]
    assert client.post("/submit_answer", json={"answer": str(found)}).json() == {"status": "recorded"}
    body = client.post("/verify", json={**row, "response": TEXT}).json()
    assert (body["reward"], body["submitted"]) == (1.0, True)
    assert body["lookups"] >= 2 and body["tool_calls"][-1] == "submit_answer"


@pytest.mark.parametrize("given,expected,same", [
    ("455000", 455000, True), ("$455,000", 455000, True), ("455000.0", 455000, True), (" 455000. ", 455000, True),
    ("455001", 455000, False), ("about 455000", 455000, False), ("1" * 1000, 455000, False),
    ("emeka  TANAKA", "Emeka Tanaka", True), ("Emeka", "Emeka Tanaka", False), ("E4", "Emeka Tanaka", False),
])
def test_answers_equal(given, expected, same):
    assert answers_equal(given, expected) is same


def test_wrong_text_only_and_second_submissions(client):
    row = ROWS[2]  # budget
    client.post("/seed_session", json=row)
    client.post("/submit_answer", json={"answer": str(row["expected_answer"] + 5000)})   # plausible wrong
    assert client.post("/submit_answer", json={"answer": str(row["expected_answer"])}).json()["status"].startswith(
        "ignored")
    body = client.post("/verify", json={**row, "response": TEXT}).json()
    assert (body["reward"], body["submitted_answer"]) == (0.0, str(row["expected_answer"] + 5000))

    client.post("/seed_session", json=row)  # right answer, but only in text: not submitted through the tool
    spoken = {"output": [{"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": f"The budget is {row['expected_answer']}."}]}]}
    body = client.post("/verify", json={**row, "response": spoken}).json()
    assert (body["reward"], body["submitted"]) == (0.0, False)


def test_lookup_errors_are_results_the_model_sees(client):
    client.post("/seed_session", json=ROWS[0])
    reply = client.post("/find_employee", json={"name": "Nobody Here"})
    assert reply.status_code == 400 and "no employee" in reply.json()["error"]["message"]
    assert client.post("/get_department", json={"department_id": "D99"}).status_code == 400
    assert client.post("/get_department", json={}).status_code == 422


def test_sessions_are_separate():
    with cookieless_client(MultiStepTools("mst", {}).build_app()) as c:
        a, b = seed(c, ROWS[2]), seed(c, ROWS[2])
        c.post("/submit_answer", json={"answer": str(ROWS[2]["expected_answer"])}, headers=a)
        rewards = [c.post("/verify", json={**ROWS[2], "response": TEXT}, headers=s).json()["reward"] for s in (a, b)]
        assert rewards == [1.0, 0.0]
        assert c.post("/find_employee", json={"name": "x"}).status_code == 400  # a new, unseeded session


def test_hostile_tool_arguments_and_output(client):
    client.post("/seed_session", json=ROWS[0])
    assert_tools_survive(client, TOOLS)
    assert_verify_survives(MultiStepTools("mst", {}), ROWS[0], tool_names=TOOLS)


def test_example_rows_and_generator():
    assert len(ROWS) >= 5
    for row in ROWS:
        TaskRow.model_validate(row)
        assert row["responses_create_params"]["tools"] == tools()
    rows = make_rows(make_row, "train", 50, 2)
    assert rows == make_rows(make_row, "train", 50, 2) and rows[:10] != make_rows(make_row, "validation", 10, 2)
    assert {r["question_kind"] for r in rows} == {"budget", "manager", "combined"}
