"""Edge probes over raw sockets: oversized and unterminated heads, too many headers, bodies that never come.

Each probe talks HTTP/1.1 by hand (clients refuse to send such requests) and returns what came back, with a
bounded wait everywhere. Reusable by any suite that checks a server's edge: pass the server's base URL.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

READ_TIMEOUT_S = 30.0


@dataclass
class Reply:
    """What a probe got back: the status, the parsed JSON body (None if not JSON), and how much it sent."""

    status: int | None
    body: Any
    raw: bytes
    sent: int  # bytes of the request actually written before the server answered or closed

    @property
    def error_type(self) -> str | None:
        """`error.type` of our JSON error envelope, if that is what came back."""
        return self.body.get("error", {}).get("type") if isinstance(self.body, dict) else None


def _connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_reply(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes, or until one full response (by content-length) arrived."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
    return data


def _parse(raw: bytes, sent: int) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = None
    if head.startswith(b"HTTP/1."):
        with contextlib.suppress(ValueError, IndexError):
            status = int(head.split(b" ", 2)[1])
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return Reply(status, parsed, raw, sent)


def send_streaming(url: str, prefix: bytes, filler: bytes, total: int, suffix: bytes = b"",
                   timeout: float = READ_TIMEOUT_S) -> Reply:
    """Write `prefix`, then `filler` repeatedly up to `total` bytes, then `suffix`, stopping as soon as the server
    answers or closes; then read its reply."""
    sock = _connect(url, timeout)
    sent = 0
    try:
        sock.sendall(prefix)
        sent = len(prefix)
        sock.setblocking(False)
        while sent < total:
            with contextlib.suppress(BlockingIOError):
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server answered early
            try:
                sent += sock.send(filler[: total - sent])
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        if sent >= total and suffix:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(suffix)
        return _parse(_read_reply(sock, timeout), sent)
    finally:
        sock.close()


def raw_request(url: str, data: bytes, timeout: float = READ_TIMEOUT_S) -> Reply:
    """Send `data` as is and read the reply."""
    sock = _connect(url, timeout)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return _parse(_read_reply(sock, timeout), len(data))
    finally:
        sock.close()


def big_header(url: str, size: int, path: str = "/health") -> Reply:
    """GET with one header of `size` bytes, terminated (the request is complete if the server reads it all)."""
    prefix = f"GET {path} HTTP/1.1\r\nHost: probe\r\nX-Big: ".encode()
    return send_streaming(url, prefix, b"a" * 65536, len(prefix) + size, suffix=b"\r\nConnection: close\r\n\r\n")


def unterminated_header(url: str, size: int, path: str = "/health") -> Reply:
    """GET whose header line keeps going for `size` bytes and never ends: the server must answer before the end."""
    prefix = f"GET {path} HTTP/1.1\r\nHost: probe\r\nX-Endless: ".encode()
    return send_streaming(url, prefix, b"b" * 65536, len(prefix) + size)


def many_headers(url: str, count: int, path: str = "/health") -> Reply:
    """GET with `count` small headers."""
    lines = "".join(f"X-H{i}: {i}\r\n" for i in range(count))
    return raw_request(url, f"GET {path} HTTP/1.1\r\nHost: probe\r\n{lines}Connection: close\r\n\r\n".encode())


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None,
         content_type: str = "application/json") -> Reply:
    """POST `body` with a correct content-length."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return raw_request(url, head + body)


def declared_body_never_sent(url: str, path: str, declared: int, timeout: float = READ_TIMEOUT_S,
                             headers: dict[str, str] | None = None) -> Reply:
    """POST declaring `declared` bytes, sending a few, then waiting: the server must give up on its own."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {declared}\r\n\r\n{{").encode()
    return raw_request(url, head, timeout=timeout)


def nested_json(depth: int) -> bytes:
    """`depth` nested arrays: deeper than any parser's recursion limit when large."""
    return b"[" * depth + b"]" * depth
