"""Counter: call `increment` until the count reaches the task's `target`."""

from __future__ import annotations

from pydantic import BaseModel

from servers.resources import Attempt, ResourcesServer, Session, TaskRow, VerifyRequest, row_fields, tool


class CounterRow(BaseModel):
    """The task row's own field: the count the episode must end at."""

    target: int


class Counter(ResourcesServer):
    """Reach a target count with the `increment` tool."""

    row_model = CounterRow

    @tool
    async def increment(self, session: Session, by: int) -> dict:
        """Add `by` to the counter and return the new count."""
        session.state["count"] = session.state.get("count", 0) + by
        return {"count": session.state["count"]}

    async def verify(self, row: VerifyRequest, session: Session) -> float:
        """Reward 1 when the count equals the row's `target`, else 0."""
        return float(session.state.get("count") == row_fields(CounterRow, row).target)

    def known_attempts(self, row: TaskRow) -> tuple[Attempt, Attempt]:
        """For `gym env test`: increment straight to the target, and overshoot it by one."""
        target = row_fields(CounterRow, row).target
        return Attempt("Done.", (("increment", {"by": target}),)), Attempt("", (("increment", {"by": target + 1}),))
