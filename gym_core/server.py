"""`GymServer`, the base of every server: health routes, JSON errors, a body-size limit, per-rollout sessions.

A subclass sets `kind` and `config_model`, registers its routes in `add_routes`, and may override the
`startup` / `shutdown` hooks. Sessions: our clients send `X-Session-Id`; NeMo Gym clients carry a signed
cookie. Every response echoes the session id in both, so either kind of client keeps its rollout's state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import inspect
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

import itsdangerous
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute

from gym_core.keepalive import DEFAULT_KEEP_ALIVE_S, StallSafeHttpProtocol
from gym_core.protocol import ErrorBody, ErrorDetail, dumps

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-Id"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

_ERROR_TYPES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 422: "invalid_request", 429: "rate_limited", 503: "unavailable",
}


class ServerConfig(BaseModel):
    """The config block every server accepts; subclasses add their own fields (and may set extra="forbid")."""

    model_config = ConfigDict(extra="allow")

    kind: str | None = None
    entrypoint: str | None = None
    env: str | None = None
    impl: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Seconds an idle connection stays open; longer than clients keep theirs (gym_core.client, 15 s).
    keep_alive_s: float = Field(DEFAULT_KEEP_ALIVE_S, gt=0)
    # Signs the session cookie; only needs to agree between workers of one server, never logged.
    session_secret: str | None = None


class JSONResponse(Response):
    """A JSON response rendered with orjson; pydantic models dump only their set fields (rows pass intact)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialize the content with `protocol.dumps`."""
        return dumps(content)


def error_response(status: int, message: str, error_type: str | None = None) -> JSONResponse:
    """An `{"error": {"type", "message"}}` response."""
    kind = error_type or _ERROR_TYPES.get(status, "http_error")
    return JSONResponse(ErrorBody(error=ErrorDetail(type=kind, message=message)), status_code=status)


def session_id_of(request: Request) -> str:
    """The rollout session id: the `X-Session-Id` header, else the signed cookie's id, else a new id."""
    state = request.scope.get("state") or {}
    if "session_id" in state:
        return state["session_id"]
    session_id = request.headers.get(SESSION_HEADER) or uuid.uuid4().hex
    request.scope.setdefault("state", {})["session_id"] = session_id
    return session_id


class GymServer:
    """Base of the agent, policy and resources servers; `build_app()` gives the FastAPI app to serve."""

    kind: ClassVar[str] = "server"
    config_model: ClassVar[type[BaseModel]] = ServerConfig

    def __init__(self, name: str, config: dict[str, Any] | BaseModel | None = None) -> None:
        self.name = name
        raw = config.model_dump() if isinstance(config, BaseModel) else (config or {})
        try:
            self.config = self.config_model.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"invalid config for server {name!r}: {describe_validation_error(exc)}") from None

    def add_routes(self, app: FastAPI) -> None:
        """Register the server's own routes; the base has none beyond health."""

    async def startup(self) -> None:
        """Run once before the first request (open clients, load models)."""

    async def shutdown(self) -> None:
        """Run once at shutdown, also after a failed startup (close what startup opened)."""

    def build_app(self) -> FastAPI:
        """The FastAPI app: health routes, error bodies, size limit and sessions around `add_routes`."""

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            try:
                await self.startup()
                yield
            finally:
                await self.shutdown()

        app = GymApp(title=f"{self.kind}:{self.name}", lifespan=lifespan, default_response_class=JSONResponse)
        health = {"status": "ok", "name": self.name, "kind": self.kind}

        @app.get("/health")
        @app.get("/")
        async def _health() -> JSONResponse:
            return JSONResponse(health)

        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(ValidationError, _validation_error)
        app.add_exception_handler(HTTPException, self._http_error)
        self.add_routes(app)
        max_bytes = getattr(self.config, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)
        secret = getattr(self.config, "session_secret", None) or f"{type(self).__name__}___{self.name}"
        edge = {"server_name": self.name, "max_request_bytes": max_bytes, "tokens": _SessionTokens(secret)}
        app.add_middleware(EdgeMiddleware, **edge)
        app.fast_edge = EdgeMiddleware(app.call_fast_endpoint, **edge)
        return app

    async def _http_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if isinstance(exc.__cause__, _BodyTooLarge):  # FastAPI wraps errors raised while it reads the body
            return error_response(413, str(exc.__cause__))
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"server {self.name!r} has no route {request.method} {request.url.path}" + _routes_hint(request)
        elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
            message = f"{request.method} is not allowed on {request.url.path} of server {self.name!r}"
        else:
            message = str(exc.detail)
        response = error_response(exc.status_code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response


def _routes_hint(request: Request) -> str:
    paths = sorted({getattr(r, "path", "") for r in request.app.routes} - {"", "/"})
    paths = [p for p in paths if not p.startswith(("/docs", "/redoc", "/openapi"))]
    return f"; its routes: {', '.join(paths[:30])}" if paths else ""


def describe_validation_error(exc: RequestValidationError | ValidationError) -> str:
    """A one-line summary naming each bad field ("a.b: Field required; ..."), without echoing the input."""
    by_field: dict[tuple[Any, ...], list[str]] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        messages = by_field.setdefault(_field_path(err.get("loc", ())), [])
        if message not in messages:
            messages.append(message)
    # A union reports every branch; where one branch got deeper, its errors are the ones that say what is wrong.
    paths = [p for p in by_field if not any(q[: len(p)] == p and len(q) > len(p) for q in by_field)]
    fields = [f"{'.'.join(map(str, p)) or 'body'}: {' or '.join(by_field[p])}" for p in paths]
    more = f" (and {len(fields) - 8} more)" if len(fields) > 8 else ""
    return "; ".join(fields[:8]) + more


# Branch names pydantic adds to error locations: scalar type names, and our item/tool union tags after an index.
_TYPE_BRANCHES = {"str", "int", "float", "bool", "dict", "list", "none"}
_UNION_TAGS = {"message", "function_call", "function_call_output", "reasoning", "other", "function"}


def _field_path(loc: Any) -> tuple[Any, ...]:
    path: list[Any] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _TYPE_BRANCHES):
            continue
        if isinstance(part, str) and part in _UNION_TAGS and path and isinstance(path[-1], int):
            continue
        path.append(part)
    return tuple(path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    return error_response(422, "invalid request: " + describe_validation_error(exc))


class _BodyTooLarge(Exception):
    pass


class _SessionTokens:
    """Session cookie tokens, byte for byte what `itsdangerous.Signer(secret, salt="gym-session")` makes.

    The HMAC runs through `hmac.digest` and recent ids' tokens are cached: a rollout's id is signed once per
    server, and its later requests only compare (itsdangerous re-builds its HMAC objects on every call).
    """

    def __init__(self, secret: str) -> None:
        self.key = itsdangerous.Signer(secret, salt="gym-session").derive_key()
        self.token = functools.lru_cache(maxsize=16384)(self._sign)

    def _sign(self, session_id: str) -> str:
        mac = hmac.digest(self.key, session_id.encode(), "sha1")
        return f"{session_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    def session_of(self, token: str) -> str | None:
        """The session id a token signs, or None when its signature is not ours."""
        session_id, dot, _ = token.rpartition(".")
        if dot and hmac.compare_digest(token.encode(), self.token(session_id).encode()):
            return session_id
        return None


# Session ids become header and cookie values: keep them to a charset that cannot smuggle cookie attributes.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class EdgeMiddleware:
    """Pure-ASGI edge: body-size limit (413), session id in and out, and 500 bodies for unhandled bugs."""

    def __init__(self, app: Any, *, server_name: str, max_request_bytes: int, tokens: _SessionTokens) -> None:
        self.app = app
        self.name = server_name
        self.max_bytes = max_request_bytes
        self.tokens = tokens
        self.cookie = "gym_session_" + re.sub(r"[^A-Za-z0-9_]", "_", server_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _header_map(scope)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._send_error(send, 413, self._too_large_message(), None)
            return
        session_id, cookie_ok = self._session_of(headers)
        if not _SESSION_ID.fullmatch(session_id):
            message = f"{SESSION_HEADER} must be 1-200 characters of A-Z a-z 0-9 . _ : - (a uuid hex is typical)"
            await self._send_error(send, 400, message, None)
            return
        scope.setdefault("state", {})["session_id"] = session_id
        started = False

        async def send_with_session(message: ASGIMessage) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + self._session_headers(session_id, cookie_ok)
            await send(message)

        try:
            await self.app(scope, self._limited(receive), send_with_session)
        except _BodyTooLarge as exc:
            if not started:
                await self._send_error(send_with_session, 413, str(exc), None)
        except Exception as exc:
            log.exception("server %r: unhandled error in %s %s", self.name, scope.get("method"), scope.get("path"))
            if not started:
                message = (
                    f"server {self.name!r} failed on {scope.get('method')} {scope.get('path')} with "
                    f"{type(exc).__name__} (a bug in the server; its log has the traceback)"
                )
                await self._send_error(send_with_session, 500, message, "internal_error")

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def receive_limited() -> ASGIMessage:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self._too_large_message())
            return message

        return receive_limited

    def _too_large_message(self) -> str:
        return (
            f"request body exceeds the {self.max_bytes}-byte limit of server {self.name!r}; "
            "raise max_request_bytes in its config or send less"
        )

    def _session_of(self, headers: dict[bytes, bytes]) -> tuple[str, bool]:
        """(session id, whether the request already carries a valid cookie for exactly that id)."""
        from_cookie = None
        raw_cookie = headers.get(b"cookie")
        if raw_cookie:
            token = _cookie_value(raw_cookie.decode("latin-1"), self.cookie)
            if token:
                from_cookie = self.tokens.session_of(token)
        header = headers.get(SESSION_HEADER.lower().encode())
        if header:
            session_id = header.decode("latin-1")
            return session_id, session_id == from_cookie
        if from_cookie:
            return from_cookie, True
        return uuid.uuid4().hex, False

    def _session_headers(self, session_id: str, cookie_ok: bool) -> list[tuple[bytes, bytes]]:
        out = [(SESSION_HEADER.lower().encode(), session_id.encode("latin-1"))]
        if not cookie_ok:
            token = self.tokens.token(session_id)
            out.append((b"set-cookie", f"{self.cookie}={token}; Path=/; HttpOnly; SameSite=lax".encode()))
        return out

    @staticmethod
    async def _send_error(send: Send, status: int, message: str, error_type: str | None) -> None:
        response = error_response(status, message, error_type)
        await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def _header_map(scope: Scope) -> dict[bytes, bytes]:
    # Repeated Cookie headers are joined as browsers would; other repeats keep the last value.
    headers: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        if key == b"cookie" and key in headers:
            headers[key] += b"; " + value
        else:
            headers[key] = value
    return headers


def _cookie_value(cookie_header: str, name: str) -> str | None:
    for part in cookie_header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None


class GymApp(FastAPI):
    """FastAPI with a fast lane for the per-rollout routes.

    A route with an exact path whose async endpoint takes only the `Request` and returns a `Response` (every
    rollout route: /run, /seed_session, /<tool>, /verify, /v1/...) is called straight from the edge, skipping
    FastAPI's middleware stack, the router's scan and dependency solving: they cost more CPU than such a
    small request's own work (benchmarks/README.md, "Framework CPU per rollout"). Its exceptions go to the
    app's handlers as before; FastAPI's native OpenTelemetry does not see these requests. Everything else
    takes the usual FastAPI path. `fast_edge` is the edge (sessions, size limit) in front of the lane.
    Middleware is never skipped: an app with middleware beyond the edge (an environment's `app.add_middleware`
    or `@app.middleware("http")`) has no fast lane, and every request goes through its middleware.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_edge: EdgeMiddleware | None = None
        self._fast_lane: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}
        self._fast_lane_of = (-1, -1)  # (routes, middleware) the lane was built from (routes may be added later)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.fast_edge is not None and not self.root_path:
            endpoint = self._lane().get((scope["method"], scope["path"]))
            if endpoint is not None and not scope.get("root_path"):
                scope.update(app=self, router=self.router, endpoint=endpoint, path_params={})
                await self.fast_edge(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def call_fast_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a fast-lane endpoint; an exception with a registered handler becomes that handler's response."""
        request = Request(scope, receive, send)
        try:
            response = await scope["endpoint"](request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # the edge answers 500, as it does for the FastAPI path
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        # Starlette's order: a handler for an HTTPException's status code, then one for the nearest class.
        if isinstance(exc, HTTPException) and exc.status_code in self.exception_handlers:
            return self.exception_handlers[exc.status_code]
        return next((self.exception_handlers[c] for c in type(exc).__mro__ if c in self.exception_handlers), None)

    def _lane(self) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
        routes, middleware = self.router.routes, self.user_middleware
        if self._fast_lane_of != (len(routes), len(middleware)):
            extra = [m for m in middleware if m.cls is not EdgeMiddleware]  # type: ignore[attr-defined]
            self._fast_lane = {} if extra else _fast_lane(routes)
            self._fast_lane_of = (len(routes), len(middleware))
        return self._fast_lane


def _fast_lane(routes: list[BaseRoute]) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
    """(method, path) -> endpoint for the plain exact-path routes that no earlier route can shadow."""
    claimed: dict[tuple[str, str], Any] = {}
    for route in routes:
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None)
        if path is None or methods is None or "{" in path:
            break  # a pattern (or a mount) matches paths of its own: routes after it keep the router's order
        plain = _plain_endpoint(route)
        for method in methods:
            claimed.setdefault((method, path), plain)
    return {key: endpoint for key, endpoint in claimed.items() if endpoint is not None}


def _plain_endpoint(route: BaseRoute) -> Callable[[Request], Awaitable[Response]] | None:
    """The endpoint when FastAPI would only call it: `async def f(request: Request) -> Response`, no extras."""
    if not isinstance(route, APIRoute) or route.dependencies or route.response_model is not None:
        return None
    if route.status_code is not None or not inspect.iscoroutinefunction(route.endpoint):
        return None
    try:
        signature = inspect.signature(route.endpoint, eval_str=True)
    except (NameError, TypeError):
        return None
    params = list(signature.parameters.values())
    returns = signature.return_annotation
    if len(params) != 1 or params[0].annotation is not Request or params[0].kind is params[0].KEYWORD_ONLY:
        return None
    return route.endpoint if isinstance(returns, type) and issubclass(returns, Response) else None


# ------------------------------------------------------------------------------------------------ serving


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket; port 0 lets the kernel pick a free port (no check-then-bind race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: FastAPI, *, log_level: str = "warning", **overrides: Any) -> uvicorn.Server:
    """A uvicorn server tuned for us: uvloop + httptools (stall-safe keep-alive, longer than our client's 15 s)."""
    options: dict[str, Any] = dict(
        loop="uvloop", http=StallSafeHttpProtocol, lifespan="on", log_level=log_level,
        timeout_keep_alive=DEFAULT_KEEP_ALIVE_S, backlog=4096, access_log=False, timeout_graceful_shutdown=10,
        # Servers are called directly (their registered URL), never through a proxy: no X-Forwarded-* to apply.
        proxy_headers=False,
    )
    options.update(overrides)
    return uvicorn.Server(uvicorn.Config(app, **options))


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone (it runs inside someone's loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serve_in_background(app: FastAPI, startup_timeout: float = 10.0) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port inside the running loop; yields its base URL; always stops it."""
    sock = bind_socket()
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, http=StallSafeHttpProtocol,
        timeout_keep_alive=DEFAULT_KEEP_ALIVE_S, timeout_graceful_shutdown=1,
    )
    server = _InProcessServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(startup_timeout):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server exited during startup; see its log")
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()
