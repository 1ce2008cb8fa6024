"""The multi_turn environment: its tools, its scripted user, its reward rule (with near misses), its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.multi_turn.app import NUDGE, ROOMS, MultiTurn, Requirements
from environments.multi_turn.generate import SPLITS, rows, tool_schemas
from gym_core.protocol import TaskRow

DATA = Path(__file__).parents[1] / "data"
ROWS = [json.loads(line) for line in (DATA / "example.jsonl").read_text().splitlines()]
ROW = ROWS[0]  # 8 people, projector, video, floor 3: Fir (R301) is the one room that fits


@pytest.fixture
def client():
    with TestClient(MultiTurn("multi_turn", {}).build_app()) as c:  # its cookie jar carries the rollout's session
        c.post("/seed_session", json=ROW)
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def user_turn(client: TestClient) -> str | None:
    reply = client.post("/user_turn", json={"output": answer("Which floor?")["output"]})
    assert reply.status_code == 200
    message = reply.json()["message"]
    return None if message is None else message["content"]


def test_find_rooms_filters_by_seats_feature_and_floor(client):
    found = client.post("/find_rooms", json={"min_capacity": 8, "feature": "video"}).json()["rooms"]
    assert [r["room_id"] for r in found] == ["R202", "R301", "R303"]
    assert client.post("/find_rooms", json={"min_capacity": 8, "feature": "video", "floor": 3}).json()["rooms"][0] == {
        "room_id": "R301", "name": "Fir", "floor": 3, "capacity": 10, "features": ["projector", "video", "whiteboard"]}
    assert client.post("/find_rooms", json={"feature": "sauna"}).status_code == 422  # the model sees why


def test_booking_an_unknown_room_is_an_error_the_model_sees(client):
    reply = client.post("/book_room", json={"room_id": "R999"})
    assert reply.status_code == 400 and "R101" in reply.json()["error"]["message"]


def test_the_user_reveals_one_requirement_per_turn_then_nudges_once_then_is_done(client):
    assert [user_turn(client) for _ in range(3)] == ROW["follow_ups"]
    assert user_turn(client) == NUDGE
    assert user_turn(client) is None and user_turn(client) is None


def test_a_user_with_a_booking_ends_after_the_script(client):
    client.post("/book_room", json={"room_id": "R301"})
    assert [user_turn(client) for _ in range(4)] == [*ROW["follow_ups"], None]


@pytest.mark.parametrize("bookings,reward,met", [
    (["R301"], 1.0, 4),                  # Fir: 10 seats, projector, video, floor 3
    ([" r301 "], 1.0, 4),                # the id as a model may write it
    (["R102", "R301"], 1.0, 4),          # booked early, rebooked after hearing more: the last booking counts
    (["R301", "R202"], 0.75, 3),         # rebooked into Dogwood: right seats and gear, wrong floor
    (["R102"], 0.5, 2),                  # Birch: seats 8 with a projector, but no video, floor 1
    (["R203"], 0.25, 1),                 # Elm: a projector only
    ([], 0.0, 0),                        # said it booked, never did
])
def test_reward_is_the_share_of_requirements_the_booking_meets(client, bookings, reward, met):
    for room in bookings:
        assert client.post("/book_room", json={"room_id": room}).status_code == 200
    body = client.post("/verify", json={**ROW, "response": answer("Booked Fir for you.")}).json()
    assert (body["reward"], body["requirements_met"], body["requirements_total"]) == (reward, met, 4)


def test_verify_counts_the_user_turns_the_model_heard(client):
    user_turn(client)
    client.post("/book_room", json={"room_id": "R301"})
    assert client.post("/verify", json={**ROW, "response": answer("done")}).json()["user_turns"] == 1


def test_example_rows_are_valid_and_are_what_the_generator_writes():
    assert len(ROWS) == 5 and rows(5, SPLITS["example"][1]) == ROWS
    for row in ROWS:
        task = TaskRow.model_validate(row)
        assert [t.model_dump(exclude_unset=True) for t in task.responses_create_params.tools] == tool_schemas()
        wanted = Requirements.model_validate(row["requirements"])
        assert wanted.best_room() is not None and len(row["follow_ups"]) == len(wanted.checks(ROOMS["R101"])) - 1


def test_generated_splits_are_seeded_and_differ():
    assert rows(3, 1) == rows(3, 1) and rows(3, 1) != rows(3, 2)
    for split in ("train", "validation"):
        lines = (DATA / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows(SPLITS[split][0], SPLITS[split][1])
