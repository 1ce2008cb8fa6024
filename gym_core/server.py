"""`GymServer`, the base of every server: health routes, JSON errors, and the edge around its routes.

A subclass sets `kind` and `config_model`, registers its routes in `add_routes`, and may override the
`startup` / `shutdown` hooks. The edge (`gym_core.edge`) bounds every request and checks the stack token;
sessions (`gym_core.sessions`) are issued and signed by the server, returned in the `X-Session-Id` header
for our clients and in a cookie for NeMo Gym's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute

from gym_core.auth import StackAuth
from gym_core.edge import ADMIN_ROUTES, EdgeMiddleware, Receive, Scope, Send, body_refused_cause
from gym_core.keepalive import DEFAULT_KEEP_ALIVE_S, StallSafeHttpProtocol
from gym_core.responses import JSONResponse, error_response
from gym_core.sessions import SESSION_HEADER, SessionRefused, SessionSigner, session_id_of, session_is_new

__all__ = ["GymServer", "ServerConfig", "JSONResponse", "error_response", "SESSION_HEADER", "session_id_of",
           "session_is_new", "describe_validation_error", "bind_socket", "uvicorn_server", "serve_in_background"]

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


class ServerConfig(BaseModel):
    """The config block every server accepts; subclasses add their own fields (and may set extra="forbid")."""

    model_config = ConfigDict(extra="allow")

    kind: str | None = None
    entrypoint: str | None = None
    env: str | None = None
    impl: str | None = None
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)  # the longest wait for the next chunk of a request body
    # Seconds an idle connection stays open; longer than clients keep theirs (gym_core.client, 15 s).
    keep_alive_s: float = Field(DEFAULT_KEEP_ALIVE_S, gt=0)
    # Signs session tokens; set it only when several workers of one server must accept each other's sessions.
    # Unset, each start draws a random secret (never logged).
    session_secret: str | None = Field(None, repr=False)


class GymServer:
    """Base of the agent, policy and resources servers; `build_app()` gives the FastAPI app to serve."""

    kind: ClassVar[str] = "server"
    config_model: ClassVar[type[BaseModel]] = ServerConfig
    # Routes that need the stack token whenever the stack has one (auth: required makes it every route).
    admin_routes: ClassVar[frozenset[tuple[str, str]]] = ADMIN_ROUTES
    # The stack token as this server sees it; `gym_core.serve` sets it before `build_app()`.
    auth: StackAuth = StackAuth()

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

    def health(self) -> dict[str, Any]:
        """The body of GET /health; subclasses may add details (e.g. session counts)."""
        return {"status": "ok", "name": self.name, "kind": self.kind}

    def build_app(self) -> FastAPI:
        """The FastAPI app: health routes, error bodies, and the edge around `add_routes`."""

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            try:
                await self.startup()
                yield
            finally:
                await self.shutdown()

        app = GymApp(title=f"{self.kind}:{self.name}", lifespan=lifespan, default_response_class=JSONResponse)

        @app.get("/health")
        @app.get("/")
        async def _health() -> JSONResponse:
            return JSONResponse(self.health())

        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(ValidationError, _validation_error)
        app.add_exception_handler(HTTPException, self._http_error)
        app.add_exception_handler(SessionRefused, _session_refused)
        self.add_routes(app)
        edge = {
            "server_name": self.name,
            "max_request_bytes": getattr(self.config, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
            "body_timeout_s": getattr(self.config, "body_timeout_s", 30.0),
            "signer": SessionSigner(getattr(self.config, "session_secret", None)),
            "auth": self.auth,
            "admin_routes": frozenset(self.admin_routes),
        }
        app.add_middleware(EdgeMiddleware, **edge)
        app.fast_edge = EdgeMiddleware(app.call_fast_endpoint, **edge)
        return app

    async def _http_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        refused = body_refused_cause(exc)  # FastAPI wraps errors raised while it reads the body
        if refused is not None:
            return error_response(refused.status, str(refused))
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


async def _session_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SessionRefused)
    return error_response(exc.status, str(exc), "invalid_session")


def _routes_hint(request: Request) -> str:
    paths = sorted({getattr(r, "path", "") for r in request.app.routes} - {"", "/"})
    paths = [p for p in paths if not p.startswith(("/docs", "/redoc", "/openapi"))]
    return f"; its routes: {', '.join(paths[:30])}" if paths else ""


def describe_validation_error(exc: RequestValidationError | ValidationError, whole: str = "body") -> str:
    """A one-line summary naming each bad field ("a.b: Field required; ..."), without echoing the input; an error
    about no one field is labelled `whole`."""
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
    fields = [f"{'.'.join(map(str, p)) or whole}: {' or '.join(by_field[p])}" for p in paths]
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
    """A uvicorn server tuned for us: uvloop + httptools with a bounded request head and a stall-safe keep-alive,
    longer than our client's (15 s)."""
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
        app, http=StallSafeHttpProtocol, lifespan="on", log_level="warning", access_log=False,
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
