"""Finding 5's cause, isolated: a server whose loop stalls past its keep-alive must answer what arrived meanwhile.

A real server process with keep_alive_s=1. Connection `idle` makes one request and goes idle (its keep-alive
timer armed); `/stall` then freezes the server's loop 2.5 s in its I/O phase, where SIGSTOP of a busy server
usually lands; meanwhile `idle` sends a second request, which the kernel holds. After the stall the loop runs its
overdue timers before it polls sockets again: uvicorn's own protocol then closed the connection with the request
unread, and the kernel answered it with a reset. The stall-safe protocol (gym_core/server.py) answers it.
"""

from __future__ import annotations

import socket
import time

import pytest

from gym_core.config import load_config
from gym_core.launcher import launch
from tests.processes import gone

BLOCKING = {"kind": "resources", "entrypoint": "tests.faults.doubles:IoPhaseStallServerForTests", "keep_alive_s": 1}


def _request(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response, or what came before the peer closed (a reset reads as a marker)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    except ConnectionResetError:
        return data + b"<connection reset by peer>"
    return head + b"\r\n\r\n" + body


@pytest.mark.timeout(60)
def test_request_arriving_while_the_loop_stalls_past_keep_alive_is_answered() -> None:
    with launch(load_config({"servers": {"slow": BLOCKING}}), echo_logs=False) as stack:
        pid = stack.servers["slow"].pid
        host, port = stack.url("slow").removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as idle, \
                socket.create_connection((host, int(port)), timeout=20) as busy:
            idle.sendall(_request("/health"))
            assert _read_response(idle).startswith(b"HTTP/1.1 200")  # idle now, keep-alive timer armed
            busy.sendall(_request("/stall?seconds=2.5", "POST"))
            assert _read_response(busy).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)  # the server's loop is stalled now
            idle.sendall(_request("/health"))  # held by the kernel until the loop runs again
            reply = _read_response(idle)
            assert reply.startswith(b"HTTP/1.1 200"), reply[-200:]
    assert gone(pid)
