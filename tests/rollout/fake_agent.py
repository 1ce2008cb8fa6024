"""Test double: an agent whose /run answers from fields of the task row, and counts requests in flight.

Row field `behaviour`: "ok" (default; reward = `reward_value`), "error" (HTTP 500), "slow" (sleeps 3 s, past
the tests' rollout timeout), "no_reward" (a body without `reward`), "failure_class" (agent-reported failure).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gym_core.server import GymServer


class FakeAgentForTests(GymServer):
    """Not a real agent: answers /run without a policy or resources server."""

    kind = "agent"

    def add_routes(self, app: FastAPI) -> None:
        """POST /run, GET /stats (most requests ever in flight at once) and POST /stats/reset."""
        stats = {"in_flight": 0, "max_in_flight": 0, "runs": 0}

        @app.post("/run")
        async def run(row: dict[str, Any]) -> Any:
            stats["in_flight"] += 1
            stats["runs"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            try:
                await asyncio.sleep(0.01)
                behaviour = row.get("behaviour", "ok")
                if behaviour == "error":
                    return JSONResponse({"error": {"type": "boom", "message": "fake failure"}}, status_code=500)
                if behaviour == "slow":
                    await asyncio.sleep(3)
                if behaviour == "no_reward":
                    return {"response": {}}
                if behaviour == "failure_class":
                    return {**row, "reward": 0.0, "_ng_failure_class": "transient", "error": "tool sandbox died"}
                return {**row, "response": {"output": []}, "reward": float(row.get("reward_value", 1.0))}
            finally:
                stats["in_flight"] -= 1

        @app.get("/stats")
        async def get_stats() -> dict:
            return stats

        @app.post("/stats/reset")
        async def reset_stats() -> dict:
            stats.update(max_in_flight=stats["in_flight"], runs=0)
            return stats
