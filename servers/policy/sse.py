"""Server-sent events for the policy routes' `stream: true`.

Chat completions stream as OpenAI's do: `data: <chunk>` frames and a final `data: [DONE]`. Responses stream
with an `event: <type>` line before each `data:` frame and no `[DONE]`, as OpenAI's Responses API does. An
error after the stream began (the engine stopped, a deadline passed) is a last `data: {"error": {...}}` frame,
which the `openai` SDK raises as an APIError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from gym_core.protocol import dumps
from servers.policy.engines.base import EngineError

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(events: AsyncIterator[dict[str, Any]], *, named: bool, headers: dict[str, str]) -> StreamingResponse:
    """A `text/event-stream` response of `events`; `named` adds `event: <type>` lines (Responses)."""
    return StreamingResponse(_frames(events, named), media_type="text/event-stream", headers={**_HEADERS, **headers})


async def _frames(events: AsyncIterator[dict[str, Any]], named: bool) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            data = b"data: " + dumps(event) + b"\n\n"
            yield b"event: " + event["type"].encode() + b"\n" + data if named else data
    except EngineError as err:
        yield b"data: " + dumps({"error": {"type": err.error_type, "message": str(err)}}) + b"\n\n"
        return
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # an async generator: close it, whatever happened
    if not named:
        yield b"data: [DONE]\n\n"
