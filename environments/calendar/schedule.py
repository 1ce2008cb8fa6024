"""Calendar arithmetic and the checks of a final calendar against a task's goals (pure functions, no I/O).

An event is a dict: `id`, `title`, `day` ("2025-03-04"), `start` and `end` ("HH:MM", same day), `attendees`.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

WORK_START, WORK_END = "09:00", "17:00"
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def minutes(time: str) -> int:
    """'HH:MM' as minutes after midnight; ValueError for anything else."""
    match = _TIME.fullmatch(time.strip()) if isinstance(time, str) else None
    if match is None:
        raise ValueError(f"times are 'HH:MM' on a 24-hour clock, got {str(time)[:40]!r}")
    return int(match[1]) * 60 + int(match[2])


def check_day(day: str) -> str:
    """The day if it is 'YYYY-MM-DD'; ValueError otherwise."""
    if not isinstance(day, str) or not _DAY.fullmatch(day.strip()):
        raise ValueError(f"days are 'YYYY-MM-DD', got {str(day)[:40]!r}")
    return day.strip()


def overlaps(a: dict, b: dict) -> bool:
    """Same day and the time ranges intersect (touching ends do not overlap)."""
    return a["day"] == b["day"] and minutes(a["start"]) < minutes(b["end"]) and minutes(b["start"]) < minutes(a["end"])


def hhmm(minute: int) -> str:
    """Minutes after midnight as 'HH:MM'."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def free_slots(events: list[dict], day: str, attendees: list[str], length: int) -> list[int]:
    """Start minutes (every 30) in working hours where every attendee is free for `length` minutes on `day`."""
    starts = range(minutes(WORK_START), minutes(WORK_END) - length + 1, 30)
    probes = [{"day": day, "start": hhmm(s), "end": hhmm(s + length), "attendees": attendees} for s in starts]
    return [minutes(p["start"]) for p in probes
            if not any(_people(e) & _people(p) and overlaps(e, p) for e in events)]


def _people(event: dict) -> set[str]:
    return {name.strip().lower() for name in event.get("attendees", [])}


def conflicts(events: list[dict]) -> list[tuple[str, str]]:
    """Pairs of event ids that share an attendee and overlap."""
    return [(a["id"], b["id"]) for a, b in combinations(events, 2) if _people(a) & _people(b) and overlaps(a, b)]


def in_working_hours(event: dict) -> bool:
    """Starts at or after 09:00 and ends by 17:00."""
    return minutes(WORK_START) <= minutes(event["start"]) and minutes(event["end"]) <= minutes(WORK_END)


def check_goal(goal: dict[str, Any], events: list[dict]) -> bool:
    """Whether the final calendar meets one goal of the task (see README.md for each type)."""
    by_id = {e["id"]: e for e in events}
    kind = goal["type"]
    if kind == "event_exists":
        matches = [e for e in events if e["title"].strip().lower() == goal["title"].lower()]
        return len(matches) == 1 and matches[0]["day"] == goal["day"] and _people(matches[0]) == {
            a.lower() for a in goal["attendees"]} and \
            minutes(matches[0]["end"]) - minutes(matches[0]["start"]) == goal["duration_minutes"]
    if kind == "deleted":
        return goal["event_id"] not in by_id
    if kind == "moved":
        event = by_id.get(goal["event_id"])
        return event is not None and event["day"] == goal["day"] and \
            minutes(event["end"]) - minutes(event["start"]) == goal["duration_minutes"]
    raise ValueError(f"unknown goal type {kind!r}: use event_exists, deleted or moved")


def grade(goals: list[dict], initial: list[dict], final: list[dict], touched: set[str]) -> dict[str, Any]:
    """reward = (goals met / goals) x (constraints kept / 3); see README.md. Doing nothing scores 0."""
    named = {g.get("event_id") for g in goals}
    goal_results = [{"check": f"{g['type']}:{g.get('event_id') or g.get('title')}", "passed": check_goal(g, final)}
                    for g in goals]
    final_by_id = {e["id"]: e for e in final}
    constraint_results = [
        {"check": "no_overlaps", "passed": not conflicts(final)},
        {"check": "working_hours", "passed": all(in_working_hours(e) for e in final if e["id"] in touched)},
        {"check": "others_unchanged", "passed": all(final_by_id.get(e["id"]) == e for e in initial
                                                    if e["id"] not in named)},
    ]
    goals_met = sum(r["passed"] for r in goal_results) / len(goal_results)
    kept = sum(r["passed"] for r in constraint_results) / len(constraint_results)
    return {"reward": goals_met * kept, "goals_met": goals_met, "constraints_kept": kept,
            "all_passed": goals_met == 1.0 and kept == 1.0, "checks": goal_results + constraint_results}
