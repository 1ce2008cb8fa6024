"""Stop working for a client that has gone: an engine call is cancelled when its HTTP connection closes.

Uvicorn (and Starlette's test client) answer `receive()` with `http.disconnect` once the client has closed
the connection or the response is complete. Racing that against the engine call lets the engine drop the
request (and free its batch slot) instead of generating thousands of tokens nobody will read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, cancelling it (and raising ClientGone) if the client disconnects first.

    Call it after the body has been read: the next `receive()` then only reports a disconnect. The watch
    cancels the work from a done-callback rather than through `asyncio.wait`, whose per-call bookkeeping is
    a measurable share of a short request's CPU (benchmarks/README.md, "Policy server vs engine").
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(lambda _: task.cancel())
    try:
        return await task  # once cancelled, it returns when the cancellation has reached the engine
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled():
            watch.exception()  # retrieved: a connection whose receive() failed is as gone as a closed one
            raise ClientGone from None
        raise
    finally:
        watch.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
