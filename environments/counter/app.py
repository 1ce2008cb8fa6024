"""Counter: call `increment` until the count reaches the task's `target`."""

from __future__ import annotations

from servers.resources import ResourcesServer, Session, VerifyRequest, tool


class Counter(ResourcesServer):
    """Reach a target count with the `increment` tool."""

    @tool
    async def increment(self, session: Session, by: int) -> dict:
        """Add `by` to the counter and return the new count."""
        session.state["count"] = session.state.get("count", 0) + by
        return {"count": session.state["count"]}

    async def verify(self, row: VerifyRequest, session: Session) -> float:
        """Reward 1 when the count equals the row's `target`, else 0."""
        return float(session.state.get("count") == row.extra["target"])
