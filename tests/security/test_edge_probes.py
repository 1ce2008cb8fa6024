"""The edge of every server kind (resources, policy, agent, registry) against hostile requests (issue 10, finding 3
and the registry half of finding 1): bounded heads, bounded bodies, bodies that never come, NaN, bad UTF-8, deep
nesting, and error messages that never echo a whole input. Short forms here; `-m slow` runs the full sizes.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from gym_core.limits import MAX_ECHO_CHARS, MAX_HEAD_BYTES, MAX_HEADERS
from tests.security import probes
from tests.security.conftest import SMALL_BODY_LIMIT


def _json_error(reply: probes.Reply, *statuses: int) -> None:
    assert reply.status in statuses, reply.raw[:300]
    assert reply.error_type is not None, reply.raw[:300]  # our envelope, never plain text


async def test_a_16_mb_header_is_refused(edge_server) -> None:
    kind, url, _, _ = edge_server
    reply = await asyncio.to_thread(probes.big_header, url, 16 * 1024 * 1024)
    _json_error(reply, 431)  # before the fix: 200, the whole header read and kept


async def test_an_unterminated_header_line_is_refused_before_it_ends(edge_server) -> None:
    kind, url, _, _ = edge_server
    # Before the fix the server kept reading (and buffering) and never answered: the probe timed out.
    reply = await asyncio.to_thread(probes.unterminated_header, url, 8 * 1024 * 1024)
    _json_error(reply, 431)


class _Transport:
    """Just enough of an asyncio transport for the protocol: records what is written and whether it closed."""

    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def test_the_protocol_stops_reading_a_head_at_its_limit() -> None:
    """How early: fed 64 KiB at a time, the protocol refuses on the chunk that crosses the limit, and closes."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from gym_core.limits import BoundedHttpToolsProtocol

    config = Config(app=lambda scope, receive, send: None, http=BoundedHttpToolsProtocol, log_level="warning")
    loop = asyncio.new_event_loop()
    try:
        protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        fed, chunk = 0, b"GET / HTTP/1.1\r\nX-Endless: " + b"b" * 65536
        while not transport.closed and fed < 300 * 1024 * 1024:
            protocol.data_received(chunk)
            fed, chunk = fed + len(chunk), b"b" * 65536
    finally:
        loop.close()
    assert fed <= MAX_HEAD_BYTES + 2 * 65536  # not 300 MiB
    assert transport.written.startswith(b"HTTP/1.1 431 ")


async def test_too_many_headers_is_431(edge_server) -> None:
    _, url, _, _ = edge_server
    _json_error(await asyncio.to_thread(probes.many_headers, url, MAX_HEADERS + 1), 431)
    ok = await asyncio.to_thread(probes.many_headers, url, 20)
    assert ok.status == 200


async def test_a_head_just_under_the_limit_is_served(edge_server) -> None:
    _, url, _, _ = edge_server
    request = b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\nX-Pad: "
    padding = b"p" * (MAX_HEAD_BYTES - len(request) - 1024)
    assert (await asyncio.to_thread(probes.raw_request, url, request + padding + b"\r\n\r\n")).status == 200


async def test_a_body_over_the_limit_is_413_before_it_is_read(edge_server) -> None:
    kind, url, route, headers = edge_server
    declared = 100 * 1024 * 1024
    # Declared too large: answered from the head alone, without waiting for (or reading) the body.
    reply = await asyncio.to_thread(probes.declared_body_never_sent, url, route, declared, 20.0, headers)
    _json_error(reply, 413)
    # Sent (no declared length would help here: chunks are counted as they arrive).
    reply = await asyncio.to_thread(probes.post, url, route, b" " * (SMALL_BODY_LIMIT + 1), headers)
    _json_error(reply, 413)
    assert len(reply.raw) < 2048, f"{kind}: the 413 echoes the input"


async def test_a_declared_body_that_never_arrives_is_cut_off(edge_server) -> None:
    kind, url, route, headers = edge_server
    # A server that waits for the body forever would still be waiting when the probe gives up (60 s).
    reply = await asyncio.to_thread(probes.declared_body_never_sent, url, route, 1000, 60.0, headers)
    _json_error(reply, 408)


@pytest.mark.parametrize("body", [
    b'{"city": NaN}', b'{"messages": [], "temperature": NaN}', b'{"name": NaN, "kind": "x", "url": "u", "pid": 1}',
    b'{"city": "\xff\xfe"}', b"{not json", probes.nested_json(100_000), b"",
], ids=["nan", "nan-policy", "nan-registry", "bad-utf8", "not-json", "nested-100k", "empty"])
async def test_malformed_json_is_a_4xx_json_error(edge_server, body: bytes) -> None:
    kind, url, route, headers = edge_server
    if len(body) > SMALL_BODY_LIMIT:
        body = probes.nested_json(SMALL_BODY_LIMIT // 2 - 1)
    reply = await asyncio.to_thread(probes.post, url, route, body, headers)
    assert reply.status is not None and 400 <= reply.status < 500, f"{kind}: {reply.raw[:300]!r}"
    assert reply.error_type is not None


async def test_validation_errors_do_not_echo_the_input(edge_server) -> None:
    kind, url, route, headers = edge_server
    marker = "s3cr3t-" + "x" * 20_000
    body = json.dumps({"responses_create_params": {"input": 5}, "messages": 5, "name": 5, "city": 5,
                       "kind": 5, "url": 5, "pid": marker, "marker": marker}).encode()
    reply = await asyncio.to_thread(probes.post, url, route, body, headers)
    assert reply.status is not None and 400 <= reply.status < 500
    assert "s3cr3t" not in reply.raw.decode("latin-1"), f"{kind} echoed its input"


async def test_a_tool_error_does_not_echo_a_huge_argument() -> None:
    from servers.resources import ResourcesServer, ToolError, tool
    from gym_core.server import serve_in_background

    class Echoing(ResourcesServer):
        @tool
        async def lookup(self, key: str) -> dict:
            """Look a key up (and, like many tools, quote it back when it is unknown)."""
            raise ToolError(f"unknown key {key!r}")

    async with serve_in_background(Echoing("echoing", {}).build_app()) as url:
        argument = json.dumps({"key": "k" * 2_000_000}).encode()
        reply = await asyncio.to_thread(probes.post, url, "/lookup", argument)
    _json_error(reply, 400)
    message = reply.body["error"]["message"]
    assert len(message) < MAX_ECHO_CHARS + 100 and "truncated: 2000014 characters" in message
