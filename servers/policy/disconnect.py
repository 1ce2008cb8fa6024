"""Stop working for a client that has gone: an engine call is cancelled when its HTTP connection closes.

Uvicorn (and Starlette's test client) answer `receive()` with `http.disconnect` once the client has closed
the connection or the response is complete. Racing that against the engine call lets the engine drop the
request (and free its batch slot) instead of generating thousands of tokens nobody will read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, cancelling it (and raising ClientGone) if the client disconnects first.

    Call it after the body has been read: the next `receive()` then only reports a disconnect.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # the cancellation reaches the engine before this returns


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
