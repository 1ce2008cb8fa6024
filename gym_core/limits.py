"""Bounds on what a request may make a server hold or say: request heads, and echoes in error messages.

Body size and body read time are bounded in the edge (`gym_core.edge`); the request head (request line plus
headers) is bounded here, in the HTTP protocol itself, because uvicorn's httptools parser would otherwise buffer
a header of any length before the app sees the request.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; browsers and proxies stay far below
MAX_HEADERS = 100
MAX_ECHO_CHARS = 4096  # of an error message: enough to say what is wrong, never the whole input


def truncate_echo(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was: error messages never echo a whole input."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [truncated: {len(text)} characters]"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head: past the limits a 431 and the connection closes.

    Bytes are counted as they arrive while the head is incomplete, so an unterminated header line is refused after
    about `max_head_bytes` plus one read, not after the parser has buffered all of it.
    """

    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = self._chunk_bytes = 0
        self._header_count = 0
        self._refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        """Parse, then refuse if the head is still incomplete past its limit (body bytes never count)."""
        self._chunk_bytes = len(data)
        if not self._in_head:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(f"the request line and headers exceed {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        """A new request: its head counts from the chunk it started in (all of it, to be safe)."""
        super().on_message_begin()
        self._in_head, self._head_bytes, self._header_count = True, self._chunk_bytes, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count headers; past the limit the parser stops (uvicorn then calls `send_400_response`)."""
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refusal = f"the request has more than {self.max_headers} headers"
            raise ValueError(self._refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete: body bytes are the edge's to bound."""
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, or our 431 when the parser stopped at our limit."""
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def _refuse(self, reason: str) -> None:
        if self.transport.is_closing():
            return
        body = ('{"error": {"type": "headers_too_large", "message": "%s; send fewer or shorter headers"}}'
                % reason).encode()
        head = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n")
        self.transport.write(head + body)
        self.transport.close()
