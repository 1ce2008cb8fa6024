"""The weather environment: its tool, its reward rule, and its example data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.weather.app import WEATHER, Weather
from gym_core.protocol import TaskRow

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture
def client():
    with TestClient(Weather("weather", {}).build_app()) as c:  # its cookie jar carries the rollout's session
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def test_get_weather_reads_the_table(client):
    assert client.post("/get_weather", json={"city": " new york "}).json() == {
        "city": "New York", "temperature_c": 21, "condition": "windy"}


def test_unknown_city_is_an_error_the_model_sees(client):
    reply = client.post("/get_weather", json={"city": "Atlantis"})
    assert reply.status_code == 400 and "Paris" in reply.json()["error"]["message"]


@pytest.mark.parametrize("text,reward", [
    ("It is 18 °C and sunny in Paris.", 1.0),
    ("Sunny, 18C.", 1.0),
    ("It is 18 °C and rainy.", 0.0),      # wrong condition
    ("Sunny and 81 degrees.", 0.0),       # wrong temperature
    ("I don't know.", 0.0),
])
def test_verify_checks_condition_and_temperature(client, text, reward):
    row = ROWS[0]  # Paris: 18, sunny
    client.post("/seed_session", json=row)
    client.post("/get_weather", json={"city": "Paris"})
    body = client.post("/verify", json={**row, "response": answer(text)}).json()
    assert body["reward"] == reward
    assert body["used_tool"] is True and body["city"] == "Paris"


def test_verify_reads_the_final_answer_only(client):
    row = ROWS[0]
    response = answer("sunny 18")
    response["output"].append(answer("on second thought, no idea")["output"][0])
    assert client.post("/verify", json={**row, "response": response}).json()["reward"] == 0.0


def test_example_rows_are_valid_and_consistent():
    assert len(ROWS) >= 5
    for row in ROWS:
        task = TaskRow.model_validate(row)
        assert [t.name for t in task.responses_create_params.function_tools] == ["get_weather"]
        assert task.responses_create_params.tools[0].model_dump(exclude_unset=True) == \
            Weather.tools["get_weather"].schema
        temperature, condition = WEATHER[row["city"]]
        assert (row["expected_temperature_c"], row["expected_condition"]) == (temperature, condition)
        assert row["city"] in task.responses_create_params.items[-1].text


@pytest.mark.parametrize("fields, named", [
    ({"expected_condition": None}, "expected_condition: Field required"),
    ({"expected_temperature_c": None}, "expected_temperature_c: Field required"),
    ({"expected_condition": 5}, "expected_condition: Input should be a valid string"),
    ({"expected_temperature_c": "warm"}, "expected_temperature_c: Input should be a valid integer"),
    ({"expected_temperature_c": [18]}, "expected_temperature_c: Input should be a valid integer"),
])
def test_a_row_missing_or_mistyping_its_fields_is_a_422_naming_them(client, fields, named):
    row = {k: v for k, v in {**ROWS[0], **fields}.items() if v is not None}
    reply = client.post("/verify", json={**row, "response": answer("18 sunny")})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_row" and named in error["message"]
