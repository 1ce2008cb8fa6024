"""A uvicorn HTTP protocol whose keep-alive never resets a request that arrived while the process was stalled."""

from __future__ import annotations

import asyncio
import select

from gym_core.limits import BoundedHttpToolsProtocol

DEFAULT_KEEP_ALIVE_S = 30.0  # longer than our client keeps idle connections (gym_core.client, 15 s)


class StallSafeHttpProtocol(BoundedHttpToolsProtocol):
    """Our httptools protocol (bounded request head), whose expiring keep-alive never drops a request received.

    A process stopped longer than its keep-alive (SIGSTOP, swap, a blocked loop) meanwhile receives requests on
    its idle connections; the kernel holds them. A busy loop is usually stopped while it dispatches socket
    events, and on resume it finishes those and runs its overdue timers before it polls sockets again: uvicorn's
    keep-alive timer closed the connections with the requests unread, and closing a socket with unread data
    makes the kernel answer RST. Every client saw "connection reset by peer" on a request it had sent, which it
    cannot safely repeat (issue 10, finding 5; docs/reliability.md). Here the timer first looks for pending
    bytes and, if there are any, waits another period: the next poll reads them.
    """

    def timeout_keep_alive_handler(self) -> None:
        """Close the idle connection, unless a request (or the client's close) is waiting to be read."""
        if not self.transport.is_closing() and _has_pending_input(self.transport):
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()


def _has_pending_input(transport: asyncio.BaseTransport) -> bool:
    """Whether the transport's socket has bytes (or an EOF) the loop has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()  # not select.select: descriptors past 1024 are common here
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))
