"""Multi-turn: book a meeting room for a simulated user who reveals the requirements one turn at a time.

The task row's first user message states one requirement (how many people); each time the model answers
without a tool call, the scripted user reveals the next one (`follow_ups`: a feature, a floor, ...), and once
everything is said and a room is booked, the user is done. The reward checks the outcome: the booked room.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from gym_core.protocol import OutputItem
from servers.resources import Attempt, Session, TaskRow, ToolError, VerifyRequest, row_fields, tool
from servers.simulated_user import SimulatedUserServer

Feature = Literal["projector", "whiteboard", "video"]
NUDGE = "Please go ahead and book a room that fits everything I asked for."


class Room(NamedTuple):
    """A bookable room."""

    name: str
    floor: int
    capacity: int
    features: frozenset[str]


# The building, fixed so that rewards are reproducible.
ROOMS: dict[str, Room] = {
    "R101": Room("Aspen", 1, 4, frozenset({"whiteboard"})),
    "R102": Room("Birch", 1, 8, frozenset({"projector", "whiteboard"})),
    "R201": Room("Cedar", 2, 6, frozenset({"video"})),
    "R202": Room("Dogwood", 2, 12, frozenset({"projector", "video"})),
    "R203": Room("Elm", 2, 4, frozenset({"projector"})),
    "R301": Room("Fir", 3, 10, frozenset({"projector", "whiteboard", "video"})),
    "R302": Room("Ginkgo", 3, 6, frozenset({"whiteboard"})),
    "R303": Room("Hazel", 3, 16, frozenset({"projector", "video", "whiteboard"})),
}


class Requirements(BaseModel):
    """What the user needs, as the task row's `requirements` field states it."""

    capacity: int = Field(ge=1)
    features: list[Feature] = Field(default_factory=list)
    floor: int | None = None

    def checks(self, room: Room) -> list[bool]:
        """One verdict per requirement, in the order the user reveals them: capacity, each feature, the floor."""
        verdicts = [room.capacity >= self.capacity, *(f in room.features for f in self.features)]
        return verdicts + ([room.floor == self.floor] if self.floor is not None else [])

    def best_room(self) -> str | None:
        """The smallest room that meets every requirement (None if there is none)."""
        fits = [rid for rid, room in ROOMS.items() if all(self.checks(room))]
        return min(fits, key=lambda rid: (ROOMS[rid].capacity, rid)) if fits else None


class MultiTurnRow(BaseModel):
    """The task row's own fields: what the user needs, and what they say after the opening message."""

    requirements: Requirements
    follow_ups: list[str] = Field(default_factory=list)  # one per requirement after the first, in order


def describe(room_id: str) -> dict:
    """A room as the tools show it."""
    room = ROOMS[room_id]
    return {"room_id": room_id, "name": room.name, "floor": room.floor, "capacity": room.capacity,
            "features": sorted(room.features)}


class MultiTurn(SimulatedUserServer):
    """Book a meeting room that meets every requirement a user reveals over several turns."""

    reward_range = (0.0, 1.0)
    row_model = MultiTurnRow

    async def seed(self, row: TaskRow, session: Session) -> None:
        """Give the session the user's script: the follow-up messages still to say."""
        session.state["follow_ups"] = list(row_fields(MultiTurnRow, row).follow_ups)
        session.state["user_turns"] = 0

    @tool
    async def find_rooms(self, min_capacity: int = 1, feature: Feature | None = None, floor: int | None = None) -> dict:
        """List the rooms with at least `min_capacity` seats, optionally with a feature and on a floor.

        Args:
            min_capacity: the fewest seats the room must have
            feature: a feature the room must have: projector, whiteboard or video
            floor: the floor the room must be on (1 to 3)
        """
        rooms = [rid for rid, room in ROOMS.items() if room.capacity >= min_capacity
                 and (feature is None or feature in room.features) and (floor is None or room.floor == floor)]
        return {"rooms": [describe(rid) for rid in rooms]}

    @tool
    async def book_room(self, session: Session, room_id: str) -> dict:
        """Book a room for the meeting, replacing any earlier booking.

        Args:
            room_id: the room's id, e.g. "R201"
        """
        key = room_id.strip().upper()
        if key not in ROOMS:
            raise ToolError(f"no room {room_id!r}; room ids are {', '.join(ROOMS)}")
        session.state["booked"] = key
        return {"booked": describe(key)}

    async def user_turn(self, session: Session, output: list[OutputItem]) -> str | None:
        """The next follow-up of the script; then, if nothing is booked yet, one nudge; then nothing."""
        follow_ups = session.state.get("follow_ups") or []
        if follow_ups:
            session.state["user_turns"] = session.state.get("user_turns", 0) + 1
            return follow_ups.pop(0)
        if not session.state.get("booked") and not session.state.get("nudged"):
            session.state["nudged"] = True
            return NUDGE
        return None

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward = the fraction of the requirements the booked room meets (0 when nothing is booked)."""
        wanted = row_fields(MultiTurnRow, row).requirements
        booked = session.state.get("booked")
        verdicts = wanted.checks(ROOMS[booked]) if booked else [False] * len(wanted.checks(ROOMS["R101"]))
        return {"reward": sum(verdicts) / len(verdicts), "booked": booked, "requirements_met": sum(verdicts),
                "requirements_total": len(verdicts), "user_turns": session.state.get("user_turns", 0)}

    def known_attempts(self, row: TaskRow) -> tuple[Attempt, Attempt]:
        """For `gym env test`: book the best room; book one that seats everyone but misses a later requirement."""
        wanted = row_fields(MultiTurnRow, row).requirements
        best = wanted.best_room()
        near = next(rid for rid, room in ROOMS.items() if wanted.checks(room)[0] and not all(wanted.checks(room)))
        search = ("find_rooms", {"min_capacity": wanted.capacity})
        return (Attempt(f"Booked {ROOMS[best].name}.", (search, ("book_room", {"room_id": best}))),
                Attempt(f"Booked {ROOMS[near].name}.", (search, ("book_room", {"room_id": near}))))
