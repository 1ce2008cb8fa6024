"""One async HTTP client per process: servers by name through the registry, a timeout on every call,
bounded retries for connection failures only.

Requests go out over one aiohttp connection pool and come back as `httpx.Response` objects, with failures
raised as httpx exceptions: callers use the httpx API. `stream()` hands back a response whose body is read as
it arrives (`aiter_bytes`, `aiter_lines`, or `aiter_sse` for server-sent events). httpx's own pool slows down
badly with thousands of requests in flight, and its request pipeline costs about 2.5x aiohttp's CPU per call
even over the `httpx-aiohttp` transport (benchmarks/README.md, "Client transport"). Cookies are never stored: one client
serves many rollouts, so a rollout's session travels explicitly in each call's headers (`X-Session-Id`,
or a NeMo Gym cookie). The stack token (`gym_core.auth`) goes to the registry and to the servers the registry
named, never to other URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import httpx

from gym_core.auth import bearer, find_token
from gym_core.protocol import dumps, loads

log = logging.getLogger(__name__)
T = TypeVar("T")

REGISTRY_URL_ENV = "GYM_REGISTRY_URL"
DEFAULT_REGISTRY_URL = "http://127.0.0.1:11000"
DEFAULT_TIMEOUT = 60.0
MAX_TRIES = 3
# Our servers keep idle connections 30 s (server.uvicorn_server); closing ours first avoids reusing a
# connection the server is closing at the same moment.
KEEPALIVE_SECONDS = 15.0


class ServerUnreachable(httpx.ConnectError):
    """No connection could be opened to a server after the bounded retries."""


class CallTimeout(httpx.TimeoutException):
    """A call got no complete response within its timeout."""


class ServerNotRegistered(LookupError):
    """The registry does not know the server name."""


class ServerError(RuntimeError):
    """A server answered with an error status; `status` and the server's `body` are kept."""

    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _is_connect_failure(exc: BaseException) -> bool:
    """True when no connection was made, so the request was never sent and repeating it is safe."""
    return isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError)


def _as_httpx_error(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(f"server disconnected before answering: {message}", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    return httpx.ReadError(message, request=request)


def connection_budget(cap: int = 8192) -> int:
    """How many connections this process may keep open: half its open-files limit, at most `cap`.

    Raises the soft open-files limit to the hard one first: a client of thousands of concurrent rollouts
    needs a socket each, and a too-small pool would queue requests and cap concurrency silently.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    except (ImportError, ValueError, OSError):  # no resource module (Windows) or not allowed: assume the usual
        soft = 1024
    return max(64, min(cap, soft // 2))


@functools.lru_cache(maxsize=4096)
def _url(url: str) -> httpx.URL:
    # Parsing a URL costs more than building the rest of the response object; a process calls few distinct URLs.
    return httpx.URL(url)


@functools.lru_cache(maxsize=4096)
def _request(method: str, url: str) -> httpx.Request:
    # A response's `request` only says what was called (method and URL; the body is not kept), so responses to
    # the same call share one: building it cost about a third of wrapping each response.
    return httpx.Request(method, _url(url))


class BufferedResponse(httpx.Response):
    """An httpx.Response over a body aiohttp has read whole and that needs no decoding.

    `Response(content=...)` followed by `read()` re-reads the bytes through httpx's streaming decoders, about
    two thirds of the cost of wrapping each reply; an unencoded body is its own content, so this subclass
    serves it as such (`content`, `text` and `json()` read `content`).
    """

    def __init__(self, status: int, headers: Any, body: bytes, request: httpx.Request) -> None:
        super().__init__(status, headers=headers, stream=httpx.ByteStream(body), request=request)
        self._body = body
        self.is_stream_consumed = self.is_closed = True  # the state `read()` leaves a response in

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body in chunks of `chunk_size` (whole by default)."""
        size = max(chunk_size or len(self._body), 1)
        for start in range(0, len(self._body), size):
            yield self._body[start:start + size]

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The body in chunks of `chunk_size` (whole by default)."""
        for chunk in self.iter_bytes(chunk_size):
            yield chunk

    @property
    def content(self) -> bytes:
        """The body."""
        return self._body

    def read(self) -> bytes:
        """The body (already read)."""
        return self._body

    async def aread(self) -> bytes:
        """The body (already read)."""
        return self._body

    @property
    def num_bytes_downloaded(self) -> int:
        """The body's size on the wire (it is not encoded)."""
        return len(self._body)


def _buffered_response(status: int, headers: Any, body: bytes, request: httpx.Request) -> httpx.Response:
    """The response for a body read whole: a compressed one is decoded by httpx's own `read()`."""
    response = BufferedResponse(status, headers, body, request)
    if "content-encoding" not in response.headers:
        return response
    response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request)
    response.read()
    return response


class _ReplyStream(httpx.AsyncByteStream):
    """An aiohttp reply's body as httpx's async byte stream, with aiohttp's errors as httpx's."""

    def __init__(self, reply: aiohttp.ClientResponse, request: httpx.Request, limit: float) -> None:
        self._reply = reply
        self._request = request
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._reply.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise CallTimeout(f"{self._request.method} {self._request.url} did not finish its streamed answer "
                              f"within {self._limit:g} s; pass a larger timeout= if it is just long",
                              request=self._request) from exc
        except aiohttp.ClientError as exc:
            raise _as_httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        """Drop the connection unless the body was read to its end (so the server sees the client leave)."""
        if self._reply.content.at_eof():
            self._reply.release()
        else:
            self._reply.close()


class ServiceClient:
    """The process's HTTP client for talking to servers by instance name or URL."""

    def __init__(
        self,
        *,
        registry_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_tries: int = MAX_TRIES,
        max_connections: int | None = None,
        auth_token: str | None = None,
    ) -> None:
        self.registry_url = (registry_url or os.environ.get(REGISTRY_URL_ENV) or DEFAULT_REGISTRY_URL).rstrip("/")
        # The stack token: given, or found from the environment / the registry's token file on first use.
        self._auth: dict[str, str] | None = bearer(auth_token) if auth_token else None
        self._trusted = {self.registry_url}  # base URLs the token may go to: the registry and what it named
        self.timeout = timeout
        self.max_tries = max_tries
        # One pool for every host; no per-host cap, since a client must not throttle a batching policy server.
        self.max_connections = max_connections or connection_budget()
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, str] = {}
        self._lookups: dict[str, asyncio.Future[str]] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, opened on first use inside the running loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS,
            )
            # Bodies stay as sent so httpx.Response decodes them once, from its own headers.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session

    async def post(
        self, server: str, path: str, json: Any = None, *, headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """POST `json` (dicts, lists or pydantic models, serialized with orjson) to `path` on `server`."""
        body = None if json is None else dumps(json)
        return await self.request("POST", server, path, content=body, headers=_with_json_type(headers),
                                  timeout=timeout)

    async def get(
        self, server: str, path: str, *, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> httpx.Response:
        """GET `path` on `server`."""
        return await self.request("GET", server, path, headers=headers, timeout=timeout)

    async def post_json(
        self, server: str, path: str, json: Any = None, *, headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """POST and return the parsed JSON body; an error status raises `ServerError` with the server's message."""
        response = await self.post(server, path, json, headers=headers, timeout=timeout)
        return parse_json(response, server)

    async def request(
        self, method: str, server: str, path: str, *, content: bytes | None = None,
        headers: dict[str, str] | None = None, timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; connection failures are retried with backoff up to `max_tries`, nothing else is."""
        limit = self.timeout if timeout is None else timeout

        async def send(url: str, sent_headers: dict[str, str] | None) -> httpx.Response:
            return await self._send(method, url, content, sent_headers, limit)

        return await self._with_retries(method, server, path, limit, headers, send)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, server: str, path: str, json: Any = None, *, headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send one request and yield its response as soon as the headers arrive; read the body incrementally.

        `timeout` bounds the whole call, body included. Leaving the block early (a `break`, an error, a
        cancelled task) closes the connection, so the server sees the client go; a body read to its end returns
        the connection to the pool. Retries are as for `request`.
        """
        limit = self.timeout if timeout is None else timeout
        body = None if json is None else dumps(json)
        all_headers = _with_json_type(headers) if body is not None else headers

        async def open_reply(url: str, sent_headers: dict[str, str] | None) -> tuple[aiohttp.ClientResponse, str]:
            reply = await self.session.request(method, url, data=body, headers=sent_headers,
                                               timeout=aiohttp.ClientTimeout(total=limit), allow_redirects=False)
            return reply, url

        reply, url = await self._with_retries(method, server, path, limit, all_headers, open_reply)
        request = _request(method, url)
        stream = _ReplyStream(reply, request, limit)
        try:
            yield httpx.Response(reply.status, headers=reply.raw_headers, stream=stream, request=request)
        finally:
            await stream.aclose()

    async def _with_retries(self, method: str, server: str, path: str, limit: float,
                            headers: dict[str, str] | None,
                            send: Callable[[str, dict[str, str] | None], Awaitable[T]]) -> T:
        """`send(url, headers)`, the stack token added for trusted servers, retrying connection failures only;
        aiohttp's errors raised as httpx's."""
        for attempt in range(1, self.max_tries + 1):
            base = await self.url_of(server)
            url = base + _slash(path)
            sent_headers = self._with_token(headers) if base in self._trusted else headers
            try:
                return await send(url, sent_headers)
            except TimeoutError as exc:
                raise CallTimeout(
                    f"{method} {url} (server {server!r}) got no response within {limit:g} s; "
                    "pass a larger timeout= if the server is just slow, or check its log",
                    request=httpx.Request(method, _url(url)),
                ) from exc
            except aiohttp.ClientError as exc:
                if not _is_connect_failure(exc):
                    raise _as_httpx_error(exc, httpx.Request(method, _url(url))) from exc
                if attempt < self.max_tries:
                    log.info("connecting to %s (server %r) failed: %s; try %d of %d", url, server, exc,
                             attempt + 1, self.max_tries)
                    await self._backoff(server, attempt)
                    continue
                raise ServerUnreachable(
                    f"cannot connect to server {server!r} at {url} after {self.max_tries} tries ({exc}); "
                    "is it running? `gym status` lists the live servers",
                    request=httpx.Request(method, _url(url)),
                ) from exc
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def _send(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str] | None, limit: float
    ) -> httpx.Response:
        request_timeout = aiohttp.ClientTimeout(total=limit)
        async with self.session.request(
            method, url, data=content, headers=headers, timeout=request_timeout, allow_redirects=False
        ) as reply:
            body = await reply.read()
        return _buffered_response(reply.status, reply.raw_headers, body, _request(method, url))

    def _with_token(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """`headers` plus the stack token, unless the caller set its own Authorization."""
        if self._auth is None:
            self._auth = bearer(find_token(self.registry_url))
        if not self._auth or (headers and any(key.lower() == "authorization" for key in headers)):
            return headers
        return {**headers, **self._auth} if headers else self._auth

    async def _backoff(self, server: str, attempt: int) -> None:
        # A refused connection may mean the server moved (restarted on a new port): look its name up again.
        self._urls.pop(server, None)
        await asyncio.sleep(0.05 * 2 ** (attempt - 1))

    async def url_of(self, server: str) -> str:
        """The base URL of a server: a value starting with http(s):// as is, else its registry entry (cached)."""
        if server.startswith(("http://", "https://")):
            return server.rstrip("/")
        url = self._urls.get(server)
        if url is not None:
            return url
        pending = self._lookups.get(server)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(server))
            self._lookups[server] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(server, None))
        return await asyncio.shield(pending)

    async def _lookup(self, server: str) -> str:
        registry = self.registry_url
        try:
            response = await self._send("GET", f"{registry}/servers/{server}", None, self._with_token(None), 10.0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnreachable(
                f"cannot reach the registry at {registry} to look up server {server!r} ({exc or 'timed out'}); "
                f"is `gym up` running? Set {REGISTRY_URL_ENV} if the registry is elsewhere"
            ) from exc
        if response.status_code == 404:
            raise ServerNotRegistered(
                f"server {server!r} is not registered at {registry}{await self._known_hint()}; "
                "is `gym up` running with it in the config?"
            )
        body = parse_json(response, "registry")
        url = str(body["url"]).rstrip("/")
        self._urls[server] = url
        self._trusted.add(url)
        return url

    async def _known_hint(self) -> str:
        try:
            reply = await self._send("GET", f"{self.registry_url}/servers", None, self._with_token(None), 5.0)
            entries = loads(reply.content)
            names = sorted(e["name"] for e in entries)
        except Exception:  # the hint is best effort; the lookup error itself is what matters
            return ""
        return f" (registered: {', '.join(names)})" if names else " (no server is registered)"

    def forget(self, server: str) -> None:
        """Drop a cached URL so the next call looks the server up again."""
        self._urls.pop(server, None)

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()


_JSON_HEADERS = {"content-type": "application/json"}


def _with_json_type(headers: dict[str, str] | None) -> dict[str, str]:
    """`headers` plus a JSON content type unless they name one."""
    if not headers:
        return _JSON_HEADERS
    if any(key.lower() == "content-type" for key in headers):
        return headers
    return {**_JSON_HEADERS, **headers}


async def aiter_sse(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event in a streamed response (multi-line data joined with newlines)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:  # a blank line ends an event
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # comments (":..."), `event:`, `id:` and `retry:` lines carry nothing the callers here use
    if data:
        yield "\n".join(data)


def _slash(path: str) -> str:
    return path if path.startswith("/") or not path else "/" + path


def parse_json(response: httpx.Response, server: str) -> Any:
    """The JSON body of a success response; an error status raises `ServerError` with the server's message."""
    try:
        body = loads(response.content) if response.content else None
    except ValueError:
        body = response.text
    if response.is_success:
        return body
    message = body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message", body)
    elif isinstance(body, dict) and "detail" in body:  # FastAPI's default error body (servers not built on ours)
        message = body["detail"]
    raise ServerError(
        f"server {server!r} answered {response.status_code} to {response.request.method} "
        f"{response.request.url.path}: {str(message)[:2000]}",
        response.status_code,
        body,
    )


_client: ServiceClient | None = None
_client_loop: asyncio.AbstractEventLoop | None = None


def get_client() -> ServiceClient:
    """The process-wide client, created lazily inside the running event loop (a new loop gets a new client)."""
    global _client, _client_loop
    loop = asyncio.get_running_loop()
    if _client is None or _client_loop is not loop:
        _client, _client_loop = ServiceClient(), loop
    return _client


async def close_client() -> None:
    """Close the process-wide client (at shutdown)."""
    global _client, _client_loop
    if _client is not None and _client_loop is asyncio.get_running_loop():
        await _client.aclose()
    _client, _client_loop = None, None
