"""What a failed /run was, for the failures sidecar: the row's fault (terminal), an outage, or a server's failure.

Each failed attempt gets an `error` (what happened, as before) and, where it can be told, an `_ng_failure_class`:
the agent's own error type (`policy_error`, `resources_unreachable`, `episode_timeout`, ...), `invalid_row` for a
row some server refused (4xx: a missing or mistyped field; marked `_ng_failure_terminal`, since running it again
cannot help), `agent_unreachable` when the agent itself could not be reached, `timeout` when it did not answer
in time. `is_outage` tells which failures mean an upstream is down (rollout/backoff.py waits those out).
"""

from __future__ import annotations

from typing import Any

import httpx

from gym_core.client import CallTimeout, ServerError, ServerNotRegistered

INVALID_ROW = "invalid_row"
# Agent answers that mean the task row was refused (the agent's 422 `invalid_row`, or its own validation).
ROW_FAULT_STATUSES = frozenset({400, 413, 422})
# Agent error types that mean a server behind it could not be reached, or lost the rollout's state (restarted).
UNREACHABLE_TYPES = frozenset({"policy_unreachable", "resources_unreachable",
                               "policy_session_lost", "resources_session_lost"})


def agent_error_type(exc: ServerError) -> str | None:
    """The `error.type` of the agent's error body, if it sent one."""
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def is_outage(exc: BaseException) -> bool:
    """Whether a failed /run means an upstream is down (not the row's or the server's doing): the agent refused
    the connection, dropped it mid-request, is not registered (restarting), or reported a server behind it
    unreachable or restarted (its sessions gone)."""
    if isinstance(exc, ServerError):
        return exc.status in (502, 503) and agent_error_type(exc) in UNREACHABLE_TYPES
    if isinstance(exc, CallTimeout):
        return False
    return isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, ServerNotRegistered))


def failure_record(exc: BaseException) -> dict[str, Any]:
    """The sidecar fields of an attempt that failed with `exc` (stamps are added by the caller)."""
    if isinstance(exc, ServerError):
        error = {"type": "http_error", "status": exc.status, "message": str(exc)}
        if exc.status in ROW_FAULT_STATUSES:
            return {"_ng_failure_class": INVALID_ROW, "_ng_failure_terminal": True, "error": error}
        kind = agent_error_type(exc)
        return {"_ng_failure_class": kind, "error": error} if kind else {"error": error}
    error = {"type": type(exc).__name__, "message": str(exc) or repr(exc)}
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return {"_ng_failure_class": "timeout", "error": error}
    if is_outage(exc):
        return {"_ng_failure_class": "agent_unreachable", "error": error}
    return {"error": error}
