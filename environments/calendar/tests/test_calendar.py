"""calendar: the tools, the per-rollout calendar, and the reward for good, near-miss and bad schedules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from environments.calendar.app import Calendar
from environments.calendar.generate import make_row, tools
from environments.calendar.schedule import conflicts, free_slots, hhmm, in_working_hours
from environments.synthetic import make_rows
from gym_core.protocol import TaskRow
from tests.environments.adversarial import assert_tools_survive, assert_verify_survives
from tests.environments.sessions import KEEP_SESSIONS, cookieless_client, seed

DATA = Path(__file__).parents[1] / "data" / "example.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]
TOOLS = ("list_events", "create_event", "move_event", "delete_event")
TEXT = {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]}]}


@pytest.fixture
def client():
    with TestClient(Calendar("calendar", KEEP_SESSIONS).build_app()) as c:
        yield c


def booking(row: dict) -> dict:
    return next(g for g in row["goals"] if g["type"] == "event_exists")


def book(client, row: dict, start: int | None = None, **changes) -> dict:
    """Book the row's meeting in its first free slot (or at `start`), with optional changed fields."""
    goal = booking(row)
    slot = free_slots(row["calendar"], goal["day"], goal["attendees"], goal["duration_minutes"])[0] \
        if start is None else start
    args = {"title": goal["title"], "day": goal["day"], "start": hhmm(slot),
            "end": hhmm(slot + goal["duration_minutes"]), "attendees": goal["attendees"]}
    return client.post("/create_event", json={**args, **changes}).json()


def solve(client, row: dict) -> None:
    """What a good agent does: list the day, book a free slot, then delete or move as asked."""
    client.post("/list_events", json={"day": booking(row)["day"]})
    booked = book(client, row)["created"]
    for goal in row["goals"]:
        if goal["type"] == "deleted":
            client.post("/delete_event", json={"event_id": goal["event_id"]})
        elif goal["type"] == "moved":
            event = next(e for e in row["calendar"] if e["id"] == goal["event_id"])
            others = [e for e in row["calendar"] + [booked] if e["id"] != event["id"]]
            slot = free_slots(others, goal["day"], event["attendees"], goal["duration_minutes"])[0]
            client.post("/move_event", json={"event_id": event["id"], "day": goal["day"], "start": hhmm(slot),
                                              "end": hhmm(slot + goal["duration_minutes"])})


def busy_row() -> tuple[dict, dict]:
    """An example row and a seeded event of one of its meeting's attendees on the meeting's day."""
    for row in ROWS:
        goal = booking(row)
        for event in row["calendar"]:
            if event["day"] == goal["day"] and set(event["attendees"]) & set(goal["attendees"]):
                return row, event
    raise AssertionError("no example row has a busy attendee on the meeting day")


def verify(client, row: dict) -> dict:
    return client.post("/verify", json={**row, "response": TEXT}).json()


@pytest.mark.parametrize("index", range(len(ROWS)))
def test_a_good_schedule_scores_one(client, index):
    client.post("/seed_session", json=ROWS[index])
    solve(client, ROWS[index])
    body = verify(client, ROWS[index])
    assert (body["reward"], body["all_passed"]) == (1.0, True), body["checks"]


def test_doing_nothing_scores_zero(client):
    client.post("/seed_session", json=ROWS[0])
    body = verify(client, ROWS[0])
    assert (body["reward"], body["goals_met"], body["constraints_kept"]) == (0.0, 0.0, 1.0)


def test_near_misses_lose_the_constraint_they_break(client):
    row, busy = busy_row()
    goal = booking(row)
    start = int(busy["start"][:2]) * 60 + int(busy["start"][3:])
    cases = [
        ({"start": start}, 2 / 3, "no_overlaps"),                                        # double-booked
        ({"start": 16 * 60 + 30}, 1 / 3, None),                                          # runs past 17:00 (+ clash?)
        ({"attendees": goal["attendees"][:-1]}, 0.0, None),                              # someone left out
        ({"title": goal["title"] + " v2"}, 0.0, None),                                   # wrong title
        ({"day": "2025-03-10"}, 0.0, None),                                              # wrong day
    ]
    for (changes, ceiling, broken) in cases:
        client.post("/seed_session", json=row)
        start_at = changes.pop("start", None)
        book(client, row, start=start_at, **changes)
        body = verify(client, row)
        assert body["reward"] <= ceiling + 1e-9 and body["reward"] < 1.0, (changes, body)
        if broken:
            assert [c["check"] for c in body["checks"] if not c["passed"]][-1] == broken


def test_wrong_length_double_booking_and_collateral_damage(client):
    row, _ = busy_row()
    goal = booking(row)
    client.post("/seed_session", json=row)
    slot = free_slots(row["calendar"], goal["day"], goal["attendees"], goal["duration_minutes"])[0]
    book(client, row, end=hhmm(slot + goal["duration_minutes"] + 30))   # 30 minutes too long
    assert verify(client, row)["goals_met"] == 0.0

    client.post("/seed_session", json=row)
    book(client, row)
    book(client, row)                                                     # booked twice
    assert verify(client, row)["goals_met"] == 0.0

    client.post("/seed_session", json=row)                                # clear the day to make room
    for event in client.post("/list_events", json={"day": goal["day"]}).json()["events"]:
        client.post("/delete_event", json={"event_id": event["id"]})
    book(client, row, start=9 * 60)
    body = verify(client, row)
    failed = {c["check"] for c in body["checks"] if not c["passed"]}
    assert "others_unchanged" in failed and f"event_exists:{goal['title']}" not in failed
    assert body["constraints_kept"] == pytest.approx(2 / 3) and body["reward"] <= 2 / 3


def test_tools_validate_and_report_conflicts(client):
    row = ROWS[0]
    client.post("/seed_session", json=row)
    busy = row["calendar"][0]
    created = client.post("/create_event", json={"title": "x", "day": busy["day"], "start": busy["start"],
                                                 "end": busy["end"], "attendees": busy["attendees"]}).json()
    assert created["conflicts_with"] == [busy["id"]]
    for bad in ({"start": "9am"}, {"start": "25:00"}, {"end": busy["start"]}, {"day": "March 3"}):
        reply = client.post("/create_event", json={"title": "x", "day": busy["day"], "start": busy["start"],
                                                   "end": busy["end"], "attendees": [], **bad})
        assert reply.status_code == 400, bad
    assert client.post("/delete_event", json={"event_id": "nope"}).status_code == 400
    assert client.post("/list_events", json={"day": "x"}).status_code == 400


def test_sessions_are_separate():
    with cookieless_client(Calendar("calendar", {}).build_app()) as c:
        a, b = seed(c, ROWS[0]), seed(c, ROWS[0])
        c.post("/delete_event", json={"event_id": ROWS[0]["calendar"][0]["id"]}, headers=a)
        days = [c.post("/list_events", json={"day": ROWS[0]["calendar"][0]["day"]},
                       headers=session).json()["events"] for session in (a, b)]
        assert len(days[1]) == len(days[0]) + 1


def test_calendar_size_is_bounded():
    with TestClient(Calendar("calendar", {"max_events": 12, **KEEP_SESSIONS}).build_app()) as c:
        c.post("/seed_session", json=ROWS[0])
        replies = [c.post("/create_event", json={"title": "x", "day": "2025-03-03", "start": "09:00", "end": "10:00",
                                                 "attendees": []}) for _ in range(5)]
        assert replies[-1].status_code == 400 and "full" in replies[-1].json()["error"]["message"]


def test_hostile_tool_arguments_and_output(client):
    client.post("/seed_session", json=ROWS[0])
    assert_tools_survive(client, TOOLS)
    assert_verify_survives(Calendar("calendar", {}), ROWS[0], tool_names=TOOLS)


def test_example_rows_and_generator():
    assert len(ROWS) >= 5
    assert {g["type"] for row in ROWS for g in row["goals"]} == {"event_exists", "deleted", "moved"}
    rows = make_rows(make_row, "train", 30, 5)
    assert rows == make_rows(make_row, "train", 30, 5) and rows[:10] != make_rows(make_row, "validation", 10, 5)
    for row in ROWS + rows:
        TaskRow.model_validate(row)
        assert row["responses_create_params"]["tools"] == tools()
        assert not conflicts(row["calendar"]) and all(map(in_working_hours, row["calendar"]))
        goal = booking(row)
        assert free_slots(row["calendar"], goal["day"], goal["attendees"], goal["duration_minutes"])
