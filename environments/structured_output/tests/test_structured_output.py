"""structured_output: JSON extraction from prose, field-level credit, schema errors, bounded on hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.structured_output.app import StructuredOutput
from environments.structured_output.extract import MAX_DEPTH, NoJSON, extract_json
from environments.structured_output.generate import make_row
from environments.structured_output.grading import fields_of, same, schema_validator
from environments.synthetic import make_rows
from gym_core.protocol import TaskRow
from tests.environments.adversarial import assert_verify_survives
from tests.environments.sessions import KEEP_SESSIONS

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
PERSON = next(r for r in ROWS if "name" in r["schema"]["properties"])  # 5 fields + validity = 6 parts


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@pytest.fixture(scope="module")
def client():
    with TestClient(StructuredOutput("so", KEEP_SESSIONS).build_app()) as c:
        yield c


def verify(client, row: dict, text: str) -> dict:
    return client.post("/verify", json={**row, "response": answer(text)}).json()


@pytest.mark.parametrize("text,document", [
    ('{"a": 1}', {"a": 1}),
    ('Sure! Here it is:\n```json\n{"a": 1}\n```\nHope that helps.', {"a": 1}),
    ('```\n[1, 2]\n```', [1, 2]),
    ('First {"a": 1} then, corrected: {"a": 2, "b": "}"}', {"a": 2, "b": "}"}),   # the last object, braces in strings
    ('The result is [1, {"x": [2]}] as requested.', [1, {"x": [2]}]),
])
def test_extract_json(text, document):
    assert extract_json(text) == document


@pytest.mark.parametrize("text", ["no json here", '{"a": 1,}', "[" * 100 + "]" * 100, "{'a': 1}",
                                  '{"n": ' + "1" * 10_000 + "}"])
def test_unreadable_json_is_no_json(text):
    with pytest.raises(NoJSON):
        extract_json(text)


def test_depth_is_checked_before_parsing():
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert extract_json(ok) is not None
    with pytest.raises(NoJSON, match="deeper"):
        extract_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_fields_are_the_schema_leaves():
    paths = [(f.path, f.required) for f in fields_of(PERSON["schema"])]
    assert paths == [(("name",), True), (("age",), True), (("member",), False), (("contact", "email"), True),
                     (("contact", "city"), False)]


def test_json_equality_is_strict_about_bools():
    assert same(1, 1.0) and not same(True, 1) and not same([1, 2], [2, 1]) and same({"a": [1]}, {"a": [1.0]})


def test_correct_answer_in_unusual_formats_scores_one(client):
    expected = PERSON["expected"]
    reordered = {"contact": dict(reversed(list(expected["contact"].items()))),
                 **{k: v for k, v in expected.items() if k != "contact"}}
    for text in (json.dumps(expected), f"```json\n{json.dumps(expected, indent=2)}\n```",
                 f"Here is the record: {json.dumps(reordered)}. Done!",
                 f"<think>they want {{\"a\": 1}}</think>{json.dumps(expected)}"):
        body = verify(client, PERSON, text)
        assert (body["reward"], body["schema_valid"]) == (1.0, True), (text, body)


@pytest.mark.parametrize("change,reward,valid", [
    (lambda d: d.update(age=d["age"] + 1), 5 / 6, True),               # plausible wrong value
    (lambda d: d.update(age=str(d["age"])), 4 / 6, False),             # "34": wrong type, document invalid
    (lambda d: d.update(member=int(d["member"])), 4 / 6, False),       # 0/1 is not a boolean
    (lambda d: d.pop("member"), 5 / 6, True),                          # optional, but the text gave it
    (lambda d: d.pop("name"), 4 / 6, False),                           # required and missing
    (lambda d: d.update(nickname="x"), 5 / 6, False),                  # additionalProperties: false
    (lambda d: d["contact"].update(email="not-an-email"), 4 / 6, False),  # format: email
])
def test_near_misses_get_partial_credit(client, change, reward, valid):
    document = json.loads(json.dumps(PERSON["expected"]))
    change(document)
    body = verify(client, PERSON, json.dumps(document))
    assert body["reward"] == pytest.approx(reward) and body["schema_valid"] is valid, body


def test_without_expected_values_only_the_schema_counts(client):
    row = ROWS[5]  # sentiment: no `expected`
    assert verify(client, row, '{"sentiment": "negative", "confidence": 0.9}')["reward"] == 1.0
    assert verify(client, row, '{"sentiment": "positive", "confidence": 0.9}')["reward"] == 1.0  # schema only
    body = verify(client, row, '{"sentiment": "angry", "confidence": 1.5}')
    assert body["reward"] == 0.0 and len(body["schema_errors"]) == 2
    assert verify(client, row, "I think it is negative.")["json_found"] is False


def test_arrays_and_the_prime_row(client):
    assert verify(client, ROWS[4], "[2, 3, 5]")["reward"] == 1.0
    assert verify(client, ROWS[4], "[2, 3, 5, 7]")["reward"] == 0.0  # one field (the array) wrong, invalid


def test_a_row_with_an_invalid_schema_is_the_rows_error_not_a_zero():
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        schema_validator({"type": "nonsense"})
    with TestClient(StructuredOutput("so", KEEP_SESSIONS).build_app()) as c:
        reply = c.post("/verify", json={**ROWS[4], "schema": {"type": 12}, "response": answer("[]")})
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row"
    assert "schema: the row's `schema` is not a valid JSON Schema" in reply.json()["error"]["message"]


@pytest.mark.timeout(120)
def test_adversarial_output_gets_a_reward():
    assert_verify_survives(StructuredOutput("so", KEEP_SESSIONS), PERSON)


def test_example_rows_and_generator(client):
    assert len(ROWS) >= 5
    for row in ROWS:
        TaskRow.model_validate(row)
        schema_validator(row["schema"])
        if "expected" in row:
            assert verify(client, row, json.dumps(row["expected"]))["reward"] == 1.0
    rows = make_rows(make_row, "train", 30, 1)
    assert rows == make_rows(make_row, "train", 30, 1) and rows[:20] != make_rows(make_row, "validation", 20, 1)
    for row in rows:
        assert schema_validator(row["schema"]).is_valid(row["expected"])
