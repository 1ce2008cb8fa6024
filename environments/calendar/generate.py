"""Synthetic scheduling tasks over one work week: book a meeting where every attendee is free, sometimes also
cancel or move an event.

    python -m environments.calendar.generate --train 1000 --validation 100 --seed 0

writes environments/calendar/data/{train,validation}.jsonl (not committed: generate on demand).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from environments.calendar.app import Calendar
from environments.calendar.schedule import conflicts, free_slots, hhmm, in_working_hours
from environments.synthetic import main

DAYS = ["2025-03-03", "2025-03-04", "2025-03-05", "2025-03-06", "2025-03-07"]
PEOPLE = ["Ada", "Bruno", "Chen", "Dalia", "Emeka"]
TITLES = ["Standup", "1:1", "Design review", "Budget sync", "Hiring panel", "Customer call", "Retro",
          "Planning", "Demo prep", "Lunch and learn", "Security training", "Roadmap review"]
NEW_TITLES = ["Launch review", "Offsite planning", "Vendor pitch", "Incident review", "Quarterly kickoff"]
SYSTEM = ("You manage a shared calendar with the tools. Working hours are 09:00-17:00. Never double-book an "
          "attendee, and leave events you were not asked about as they are.")


def tools() -> list[dict[str, Any]]:
    """The tools as a row offers them (strict function tools)."""
    return [{**schema, "strict": True} for schema in Calendar("calendar", {}).tool_schemas()]


def _event(event_id: str, title: str, day: str, start: int, length: int, attendees: list[str]) -> dict[str, Any]:
    return {"id": event_id, "title": title, "day": day, "start": hhmm(start), "end": hhmm(start + length),
            "attendees": attendees}


def make_calendar(rng: random.Random) -> list[dict[str, Any]]:
    """10-16 events over the week, no attendee double-booked, all in working hours."""
    events: list[dict[str, Any]] = []
    for title in rng.sample(TITLES, rng.randint(10, len(TITLES))):
        for _ in range(20):  # placement attempts
            candidate = _event(f"ev{len(events) + 1}", title, rng.choice(DAYS), rng.randrange(540, 960, 30),
                               rng.choice([30, 60, 90]), sorted(rng.sample(PEOPLE, rng.randint(1, 3))))
            if in_working_hours(candidate) and not conflicts(events + [candidate]):
                events.append(candidate)
                break
    return events


def make_row(rng: random.Random) -> dict[str, Any]:
    """One task: a meeting to book (a free slot always exists), maybe also an event to cancel or move."""
    while True:
        events = make_calendar(rng)
        attendees, day, length = sorted(rng.sample(PEOPLE, rng.randint(2, 3))), rng.choice(DAYS), rng.choice([30, 60, 90])
        if free_slots(events, day, attendees, length):
            break
    title = rng.choice(NEW_TITLES)
    goals: list[dict[str, Any]] = [{"type": "event_exists", "title": title, "day": day, "attendees": attendees,
                                    "duration_minutes": length}]
    asks = [f"Book a {length}-minute '{title}' on {day} with {', '.join(attendees)}."]
    extra = rng.choice(["none", "delete", "move"])
    other = rng.choice(events)
    if extra == "delete":
        goals.append({"type": "deleted", "event_id": other["id"]})
        asks.append(f"Also cancel the '{other['title']}' on {other['day']}.")
    elif extra == "move":
        target = rng.choice([d for d in DAYS if d != other["day"]])
        others = [e for e in events if e["id"] != other["id"]]
        span = int(other["end"][:2]) * 60 + int(other["end"][3:]) - int(other["start"][:2]) * 60 - int(other["start"][3:])
        if free_slots(others, target, other["attendees"], span):
            goals.append({"type": "moved", "event_id": other["id"], "day": target, "duration_minutes": span})
            asks.append(f"Also move the '{other['title']}' from {other['day']} to {target} (any free time, "
                        "same length).")
    return {
        "responses_create_params": {"input": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": " ".join(asks)}], "tools": tools()},
        "calendar": events,
        "goals": goals,
    }


if __name__ == "__main__":
    main(make_row, __doc__.splitlines()[0], Path(__file__).parent / "data")
