"""Test double: an agent whose /run answers from fields of the task row, and counts requests in flight.

Row field `behaviour`: "ok" (default; reward = `reward_value`), "error" (HTTP 500), "slow" (sleeps 3 s, past
the tests' rollout timeout), "no_reward" (a body without `reward`), "failure_class" (agent-reported failure),
"terminal" (a failure not to retry), "flaky" (HTTP 500 unless the row has `_ng_attempt_index`), "no_persist"
(a kill-shaped result: `_ng_no_persist`). Row field
`delay`: seconds to wait first; `with_tokens`: the output carries one model call's token fields.
POST /aggregate_metrics answers `servers.resources.aggregate_metrics` of the rows (and keeps the last request for
GET /stats); a row with `fail_aggregate` makes it answer HTTP 500.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gym_core.server import GymServer
from servers.resources import aggregate_metrics


class FakeAgentForTests(GymServer):
    """Not a real agent: answers /run without a policy or resources server."""

    kind = "agent"

    def add_routes(self, app: FastAPI) -> None:
        """POST /run, GET /stats (most requests ever in flight at once) and POST /stats/reset."""
        stats: dict[str, Any] = {"in_flight": 0, "max_in_flight": 0, "runs": 0, "aggregated": None}

        @app.post("/run")
        async def run(row: dict[str, Any]) -> Any:
            stats["in_flight"] += 1
            stats["runs"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            try:
                await asyncio.sleep(row.get("delay", 0.01))
                behaviour = row.get("behaviour", "ok")
                if behaviour == "error" or (behaviour == "flaky" and "_ng_attempt_index" not in row):
                    return JSONResponse({"error": {"type": "boom", "message": "fake failure"}}, status_code=500)
                if behaviour == "slow":
                    await asyncio.sleep(3)
                if behaviour == "no_reward":
                    return {"response": {}}
                if behaviour == "failure_class":
                    return {**row, "reward": 0.0, "_ng_failure_class": "transient", "error": "tool sandbox died"}
                if behaviour == "no_persist":
                    return {**row, "_ng_no_persist": True, "_ng_failure_class": "kill_shaped", "error": "OOM"}
                if behaviour == "terminal":
                    return {**row, "_ng_failure_class": "skipped", "_ng_failure_terminal": True, "error": "no"}
                output = [_model_call(row)] if row.get("with_tokens") else []
                return {**row, "response": {"output": output}, "reward": float(row.get("reward_value", 1.0))}
            finally:
                stats["in_flight"] -= 1

        @app.post("/aggregate_metrics")
        async def metrics(body: dict[str, Any]) -> Any:
            rows = body["verify_responses"]
            stats["aggregated"] = rows
            if any(r.get("fail_aggregate") for r in rows):
                return JSONResponse({"error": {"type": "boom", "message": "no metrics"}}, status_code=500)
            return aggregate_metrics(rows)

        @app.get("/stats")
        async def get_stats() -> dict:
            return stats

        @app.post("/stats/reset")
        async def reset_stats() -> dict:
            stats.update(max_in_flight=stats["in_flight"], runs=0)
            return stats


def _model_call(row: dict[str, Any]) -> dict[str, Any]:
    """A message item with token fields: prompt [1, task index], generation [rollout index, 2]."""
    return {"type": "message", "role": "assistant", "content": [],
            "prompt_token_ids": [1, row["_ng_task_index"]], "generation_token_ids": [row["_ng_rollout_index"], 2],
            "generation_log_probs": [-0.5, -0.25]}
