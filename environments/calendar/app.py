"""Calendar: a per-rollout calendar seeded from the row; the model lists, creates, moves and deletes events."""

from __future__ import annotations

import copy
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator, model_validator

from environments.calendar.schedule import check_day, conflicts, free_slots, grade, hhmm, minutes
from servers.resources import (
    Attempt,
    ResourcesConfig,
    ResourcesServer,
    Session,
    TaskRow,
    ToolError,
    VerifyRequest,
    row_fields,
    tool,
)

MAX_TITLE_CHARS = 100
MAX_ATTENDEES = 20


def _time(value: str) -> str:
    minutes(value)  # ValueError unless "HH:MM"
    return value.strip()


class Event(BaseModel):
    """An event of the row's initial calendar (as the tools show it)."""

    id: str
    title: str
    day: Annotated[str, AfterValidator(check_day)]
    start: Annotated[str, AfterValidator(_time)]
    end: Annotated[str, AfterValidator(_time)]
    attendees: list[str]

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Event:
        if minutes(self.end) <= minutes(self.start):
            raise ValueError(f"end {self.end!r} must be after start {self.start!r} on the same day")
        return self


class BookGoal(BaseModel):
    """A meeting that must exist at the end: once, on `day`, with exactly these attendees, this long."""

    type: Literal["event_exists"]
    title: str
    day: Annotated[str, AfterValidator(check_day)]
    attendees: list[str]
    duration_minutes: int = Field(gt=0)


class DeleteGoal(BaseModel):
    """An event that must be gone at the end."""

    type: Literal["deleted"]
    event_id: str


class MoveGoal(BaseModel):
    """An event that must be on `day` at the end, as long as it was."""

    type: Literal["moved"]
    event_id: str
    day: Annotated[str, AfterValidator(check_day)]
    duration_minutes: int = Field(gt=0)


class CalendarRow(BaseModel):
    """The task row's own fields: the initial calendar and what must be true of it at the end."""

    calendar: list[Event]
    goals: list[Annotated[BookGoal | DeleteGoal | MoveGoal, Field(discriminator="type")]] = Field(min_length=1)

    @field_validator("goals")
    @classmethod
    def _name_events(cls, goals: list[BookGoal | DeleteGoal | MoveGoal], info: ValidationInfo) -> list:
        # A goal about an event the calendar lacks would be met, or missed, whatever the model does.
        if "calendar" not in info.data:  # refused already
            return goals
        ids = {event.id for event in info.data["calendar"]}
        for goal in goals:
            if not isinstance(goal, BookGoal) and goal.event_id not in ids:
                raise ValueError(f"event_id {goal.event_id[:50]!r} is not an event of `calendar`")
        return goals


class CalendarConfig(ResourcesConfig):
    """The calendar server block."""

    max_events: int = Field(200, ge=1)  # events one rollout's calendar may hold


class Calendar(ResourcesServer):
    """Scheduling under constraints; the reward checks the final calendar (see README.md)."""

    config: CalendarConfig
    config_model = CalendarConfig
    row_model = CalendarRow

    async def seed(self, row: TaskRow, session: Session) -> None:
        """Load the row's `calendar` into the session."""
        events = [event.model_dump() for event in row_fields(CalendarRow, row).calendar]
        session.state.update(events=events, touched=set(), next_id=len(events) + 1)

    def _events(self, session: Session) -> list[dict]:
        if "events" not in session.state:
            raise ToolError("no calendar is loaded for this session: call /seed_session with the task row first")
        return session.state["events"]

    def _find(self, session: Session, event_id: str) -> dict:
        for event in self._events(session):
            if event["id"] == event_id:
                return event
        raise ToolError(f"no event with id {event_id[:50]!r}; call list_events to see the ids")

    @tool
    async def list_events(self, session: Session, day: str) -> dict:
        """List the events of one day, earliest first, with their ids.

        Args:
            day: the date, "YYYY-MM-DD"
        """
        try:
            day = check_day(day)
        except ValueError as err:
            raise ToolError(str(err)) from None
        events = sorted((e for e in self._events(session) if e["day"] == day), key=lambda e: e["start"])
        return {"day": day, "events": events}

    @tool
    async def create_event(self, session: Session, title: str, day: str, start: str, end: str,
                           attendees: list[str]) -> dict:
        """Create an event. It may overlap others: checking availability is your job.

        Args:
            title: the event's title
            day: the date, "YYYY-MM-DD"
            start: start time, "HH:MM" (24-hour)
            end: end time, "HH:MM", after start on the same day
            attendees: the attendees' names
        """
        events = self._events(session)
        if len(events) >= self.config.max_events:
            raise ToolError(f"the calendar is full ({self.config.max_events} events); delete some first")
        day = _validate_times(day, start, end)
        if not title.strip() or len(title) > MAX_TITLE_CHARS or len(attendees) > MAX_ATTENDEES:
            raise ToolError(f"a title needs 1-{MAX_TITLE_CHARS} characters and at most {MAX_ATTENDEES} attendees")
        event = {"id": f"ev{session.state['next_id']}", "title": title.strip(), "day": day, "start": start.strip(),
                 "end": end.strip(), "attendees": [a.strip()[:MAX_TITLE_CHARS] for a in attendees]}
        session.state["next_id"] += 1
        events.append(event)
        session.state["touched"].add(event["id"])
        return {"created": event, "conflicts_with": _clashes(event, events)}

    @tool
    async def move_event(self, session: Session, event_id: str, day: str, start: str, end: str) -> dict:
        """Move an event to a new day and time (its title and attendees stay).

        Args:
            event_id: the event's id, from list_events
            day: the new date, "YYYY-MM-DD"
            start: the new start time, "HH:MM"
            end: the new end time, "HH:MM"
        """
        event = self._find(session, event_id)
        event.update(day=_validate_times(day, start, end), start=start.strip(), end=end.strip())
        session.state["touched"].add(event_id)
        return {"moved": event, "conflicts_with": _clashes(event, self._events(session))}

    @tool
    async def delete_event(self, session: Session, event_id: str) -> dict:
        """Delete an event.

        Args:
            event_id: the event's id, from list_events
        """
        event = self._find(session, event_id)
        self._events(session).remove(event)
        return {"deleted": event_id}

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """reward = (goals met / goals) x (constraints kept / 3) over the session's final calendar."""
        task = row_fields(CalendarRow, row)
        initial = [event.model_dump() for event in task.calendar]
        final = session.state.get("events", initial)  # never seeded: nothing changed
        return grade([goal.model_dump() for goal in task.goals], initial, final, session.state.get("touched", set()))

    def known_attempts(self, row: TaskRow) -> tuple[Attempt, Attempt]:
        """For `gym env test`: list the day, book the meeting in a free slot, then delete or move as asked; the
        same with the meeting 30 minutes off its asked length."""
        return Attempt("Done.", _plan(row, 0)), Attempt("Done.", _plan(row, 30))


def _validate_times(day: str, start: str, end: str) -> str:
    try:
        day = check_day(day)
        if minutes(end) <= minutes(start):
            raise ValueError(f"end {end!r} must be after start {start!r} on the same day")
    except ValueError as err:
        raise ToolError(str(err)) from None
    return day


def _clashes(event: dict, events: list[dict]) -> list[str]:
    return [b if a == event["id"] else a for a, b in conflicts(events) if event["id"] in (a, b)]


def _plan(row: TaskRow, length_error: int) -> tuple[tuple[str, dict], ...]:
    """The tool calls of a careful scheduler for the row's goals (the meeting `length_error` minutes off)."""
    events = copy.deepcopy(row.extra["calendar"])
    goals = sorted(row.extra["goals"], key=lambda g: g["type"] != "event_exists")  # book first: its slot is promised
    calls: list[tuple[str, dict]] = [("list_events", {"day": goals[0]["day"]})]
    for goal in goals:
        if goal["type"] == "event_exists":
            length = goal["duration_minutes"]
            start = free_slots(events, goal["day"], goal["attendees"], length)[0]
            if length_error:
                length += length_error if length <= length_error else -length_error
            event = {"title": goal["title"], "day": goal["day"], "start": hhmm(start), "end": hhmm(start + length),
                     "attendees": goal["attendees"]}
            events.append({"id": "new", **event})
            calls.append(("create_event", event))
        elif goal["type"] == "deleted":
            events = [e for e in events if e["id"] != goal["event_id"]]
            calls.append(("delete_event", {"event_id": goal["event_id"]}))
        elif goal["type"] == "moved":
            moved = next(e for e in events if e["id"] == goal["event_id"])
            others = [e for e in events if e is not moved]
            start = free_slots(others, goal["day"], moved["attendees"], goal["duration_minutes"])[0]
            moved.update(day=goal["day"], start=hhmm(start), end=hhmm(start + goal["duration_minutes"]))
            calls.append(("move_event", {"event_id": moved["id"], "day": goal["day"], "start": moved["start"],
                                         "end": moved["end"]}))
    return tuple(calls)
