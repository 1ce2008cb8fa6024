"""ServiceClient: timeouts, retries only for connection failures (bounded), registry lookup, no cookie jar."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from gym_core.client import (
    REGISTRY_URL_ENV,
    CallTimeout,
    ServerError,
    ServerNotRegistered,
    ServerUnreachable,
    ServiceClient,
    aiter_sse,
    close_client,
    connection_budget,
    get_client,
)
from gym_core.server import bind_socket, serve_in_background


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound then closed, so the kernel refuses connections)."""
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def target_app(hits: dict[str, int]) -> FastAPI:
    """The server the client talks to; `hits` counts requests per route so tests can see retries."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        hits["echo"] = hits.get("echo", 0) + 1
        return {"body": await request.json(), "cookie": request.headers.get("cookie")}

    @app.get("/sleep/{seconds}")
    async def sleep(seconds: float) -> dict:
        hits["sleep"] = hits.get("sleep", 0) + 1
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.post("/fail")
    async def fail() -> None:
        hits["fail"] = hits.get("fail", 0) + 1
        raise HTTPException(422, "invalid request: body.reward: Field required")

    @app.get("/gzip")
    async def gzipped() -> Response:
        body = gzip.compress(b'{"zipped": true}')
        return Response(body, media_type="application/json", headers={"content-encoding": "gzip"})

    @app.get("/set-cookie")
    async def set_cookie(response: Response) -> dict:
        response.set_cookie("gym_session_x", "abc")
        return {}

    return app


def registry_stub(entries: dict[str, str], lookups: list[str]) -> FastAPI:
    """Test double of the launcher's registry: GET /servers and GET /servers/{name} from a dict."""
    app = FastAPI()

    @app.get("/servers")
    async def servers() -> list:
        return [{"name": name, "kind": "resources", "url": url, "pid": 0} for name, url in entries.items()]

    @app.get("/servers/{name}")
    async def server(name: str) -> dict:
        lookups.append(name)
        if name not in entries:
            raise HTTPException(404, f"no server {name!r}")
        return {"name": name, "kind": "resources", "url": entries[name], "pid": 0}

    return app


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, dict[str, int]]]:
    hits: dict[str, int] = {}
    async with serve_in_background(target_app(hits)) as url:
        yield url, hits


@pytest.fixture
async def client() -> AsyncIterator[ServiceClient]:
    service = ServiceClient(registry_url=closed_port_url())
    yield service
    await service.aclose()


async def test_post_and_get_by_url_give_httpx_responses(target, client: ServiceClient) -> None:
    url, _ = target
    response = await client.post(url, "echo", {"a": [1, 2]}, headers={"X-Session-Id": "s"})
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200 and response.json()["body"] == {"a": [1, 2]}
    assert response.headers["content-type"] == "application/json"
    assert response.request.method == "POST" and response.request.url.path == "/echo"
    response.raise_for_status()
    assert (await client.get(url + "/", "/sleep/0")).json() == {"slept": 0}
    assert (await client.post_json(url, "/echo", {"k": 1}, headers={"Content-Type": "application/json"}))["body"] == {"k": 1}
    assert response.is_stream_consumed and response.is_closed and response.num_bytes_downloaded == len(response.content)
    assert response.text == response.content.decode() and response.http_version == "HTTP/1.1"
    zipped = await client.get(url, "/gzip")  # a compressed body is decoded, as httpx would
    assert zipped.json() == {"zipped": True} and zipped.headers["content-encoding"] == "gzip"


async def test_closed_port_fails_fast_after_bounded_tries(client: ServiceClient) -> None:
    url = closed_port_url()
    attempts = 0
    send = client._send

    async def counting_send(*args, **kwargs):
        nonlocal attempts
        attempts += 1
        return await send(*args, **kwargs)

    client._send = counting_send  # type: ignore[method-assign]
    started = time.perf_counter()
    with pytest.raises(ServerUnreachable, match=r"after 3 tries.*is it running") as caught:
        await client.post(url, "/run", {"x": 1})
    assert attempts == 3
    assert time.perf_counter() - started < 2.0
    assert isinstance(caught.value, httpx.ConnectError)  # callers catching httpx errors still do


async def test_timeout_is_honoured_and_not_retried(target, client: ServiceClient) -> None:
    url, hits = target
    started = time.perf_counter()
    with pytest.raises(CallTimeout, match=r"within 0.3 s.*timeout="):
        await client.get(url, "/sleep/5", timeout=0.3)
    assert time.perf_counter() - started < 2.0
    assert hits["sleep"] == 1


async def test_per_call_timeout_overrides_the_default(target) -> None:
    url, _ = target
    service = ServiceClient(timeout=0.1)
    try:
        with pytest.raises(CallTimeout):
            await service.get(url, "/sleep/0.5")
        assert (await service.get(url, "/sleep/0.5", timeout=5)).json() == {"slept": 0.5}
    finally:
        await service.aclose()


async def test_http_errors_are_returned_not_retried(target, client: ServiceClient) -> None:
    url, hits = target
    response = await client.post(url, "/fail", {})
    assert response.status_code == 422 and hits["fail"] == 1
    with pytest.raises(ServerError, match=r"answered 422 to POST /fail: invalid request: body.reward") as caught:
        await client.post_json(url, "/fail", {})
    assert caught.value.status == 422 and hits["fail"] == 2


async def test_dropped_connection_after_send_is_not_retried(client: ServiceClient) -> None:
    received = 0

    async def read_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.close()

    server = await asyncio.start_server(read_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.TransportError) as caught:
            await client.post(f"http://127.0.0.1:{port}", "/tool", {"a": 1})
        assert not isinstance(caught.value, (ServerUnreachable, httpx.TimeoutException))
        assert received == 1  # the request may have run: repeating it is not the client's call
    finally:
        server.close()
        await server.wait_closed()


async def test_cookies_are_never_stored(target, client: ServiceClient) -> None:
    url, _ = target
    response = await client.get(url, "/set-cookie")
    assert "gym_session_x=abc" in response.headers["set-cookie"]
    assert (await client.post(url, "/echo", {})).json()["cookie"] is None
    explicit = await client.post(url, "/echo", {}, headers={"cookie": "gym_session_x=abc"})
    assert explicit.json()["cookie"] == "gym_session_x=abc"


async def test_registry_lookup_is_cached_and_shared(target, monkeypatch) -> None:
    url, hits = target
    lookups: list[str] = []
    async with serve_in_background(registry_stub({"weather": url}, lookups)) as registry:
        monkeypatch.setenv(REGISTRY_URL_ENV, registry)
        service = ServiceClient()
        try:
            urls = await asyncio.gather(*(service.url_of("weather") for _ in range(50)))
            assert set(urls) == {url} and lookups == ["weather"]
            await service.post("weather", "/echo", {"n": 1})
            await service.post("weather", "echo", {"n": 2})
            assert lookups == ["weather"] and hits["echo"] == 2
        finally:
            await service.aclose()


async def test_unregistered_name_says_what_to_do(target) -> None:
    url, _ = target
    async with serve_in_background(registry_stub({"weather": url}, [])) as registry:
        service = ServiceClient(registry_url=registry)
        try:
            with pytest.raises(ServerNotRegistered, match=r"'wether' is not registered.*registered: weather.*gym up"):
                await service.post("wether", "/echo", {})
        finally:
            await service.aclose()


async def test_registry_down_names_the_env_var(client: ServiceClient) -> None:
    with pytest.raises(ServerUnreachable, match=rf"registry at {client.registry_url}.*gym up.*{REGISTRY_URL_ENV}"):
        await client.url_of("policy")


async def test_moved_server_is_looked_up_again(target) -> None:
    url, hits = target
    entries = {"weather": closed_port_url()}  # a stale entry: the server restarted elsewhere
    lookups: list[str] = []
    async with serve_in_background(registry_stub(entries, lookups)) as registry:
        service = ServiceClient(registry_url=registry)
        try:
            await service.url_of("weather")
            entries["weather"] = url
            assert (await service.post("weather", "/echo", {"n": 1})).status_code == 200
            assert lookups == ["weather", "weather"] and hits["echo"] == 1
        finally:
            await service.aclose()


async def test_concurrent_calls_are_not_queued_behind_a_small_pool(target, client: ServiceClient) -> None:
    url, hits = target
    started = time.perf_counter()
    replies = await asyncio.gather(*(client.get(url, "/sleep/0.5") for _ in range(300)))
    assert {r.status_code for r in replies} == {200} and hits["sleep"] == 300
    assert time.perf_counter() - started < 4.0  # a pool of 100 would need three rounds of 0.5 s plus queueing


def test_connection_budget_is_bounded() -> None:
    assert 64 <= connection_budget() <= 8192
    assert connection_budget(cap=100) <= 100
    assert ServiceClient(max_connections=10).max_connections == 10


async def test_get_client_is_one_per_loop() -> None:
    first = get_client()
    assert get_client() is first
    await close_client()
    assert get_client() is not first
    await close_client()


# ------------------------------------------------------------------------------------------------ streaming


def streaming_app(disconnected: asyncio.Event) -> FastAPI:
    """Server-sent events: three events then [DONE]; and an endless stream that notices its client leave."""
    app = FastAPI()

    @app.post("/events")
    async def events(request: Request) -> StreamingResponse:
        count = (await request.json())["count"]

        async def body() -> AsyncIterator[bytes]:
            for i in range(count):
                yield f"data: {{\"i\": {i}}}\n\n".encode()
            yield b": a comment\r\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/endless")
    async def endless() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"data: tick\n\n"
                    await asyncio.sleep(0.01)
            finally:
                disconnected.set()

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/stall")
    async def stall() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await asyncio.sleep(30)

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


async def test_stream_yields_server_sent_events_as_they_come(client: ServiceClient) -> None:
    async with serve_in_background(streaming_app(asyncio.Event())) as url:
        async with client.stream("POST", url, "/events", {"count": 3}, headers={"X-Session-Id": "s"}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = [event async for event in aiter_sse(response)]
        assert events == ['{"i": 0}', '{"i": 1}', '{"i": 2}', "two\nlines", "[DONE]"]
        # The connection went back to the pool: the next call reuses it and still works.
        async with client.stream("POST", url, "/events", {"count": 1}) as again:
            assert [event async for event in aiter_sse(again)] == ['{"i": 0}', "two\nlines", "[DONE]"]


async def test_leaving_a_stream_early_closes_the_connection(client: ServiceClient) -> None:
    disconnected = asyncio.Event()
    async with serve_in_background(streaming_app(disconnected)) as url:
        async with client.stream("GET", url, "/endless") as response:
            async for event in aiter_sse(response):
                assert event == "tick"
                break
        await asyncio.wait_for(disconnected.wait(), timeout=10)  # the server saw the client go

        # A cancelled consumer also lets go.
        disconnected.clear()
        started = asyncio.Event()

        async def consume() -> None:
            async with client.stream("GET", url, "/endless") as endless:
                async for _ in endless.aiter_lines():
                    started.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(started.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(disconnected.wait(), timeout=10)


async def test_a_stream_is_bounded_by_its_timeout(client: ServiceClient) -> None:
    async with serve_in_background(streaming_app(asyncio.Event())) as url:
        with pytest.raises(CallTimeout, match="streamed answer within 0.5 s"):
            async with client.stream("GET", url, "/stall", timeout=0.5) as response:
                async for _ in response.aiter_bytes():
                    pass


async def test_a_stream_to_a_closed_port_is_unreachable_after_bounded_tries(client: ServiceClient) -> None:
    with pytest.raises(ServerUnreachable, match="after 3 tries"):
        async with client.stream("POST", closed_port_url(), "/events", {"count": 1}):
            pass


async def test_buffered_responses_read_like_read_ones(target, client: ServiceClient) -> None:
    url, _ = target
    response = await client.post(url, "/echo", {"a": 1})
    assert response.read() == await response.aread() == response.content
    assert b"".join(response.iter_bytes(chunk_size=3)) == response.content
    assert b"".join([chunk async for chunk in response.aiter_bytes()]) == response.content
    assert "".join(response.iter_lines()) == response.text
