"""The registry: which server name is at which URL. A tiny HTTP service run inside the launcher process.

Routes: `POST /register {name, kind, url, pid}`, `POST /deregister {name}`, `GET /servers`,
`GET /servers/{name}`, `GET /health`, and `POST /shutdown` (what `gym down` calls: the launcher then
stops every server it started). It is a `GymServer`, so it has the same edge as every server (body limit and
read timeout, bounded headers, JSON errors that never echo the input). The three mutating routes need the stack
token whenever the stack has one, and refuse what a browser page could send (a foreign `Origin`, a cross-site
fetch, a body that is not JSON), token or not. A name that a live process registered is not handed to another.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import ClassVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from gym_core.auth import StackAuth
from gym_core.head_server import add_head_routes
from gym_core.protocol import dumps, loads
from gym_core.responses import JSONResponse, error_response
from gym_core.server import GymServer, describe_validation_error, uvicorn_server

REGISTRY_MAX_REQUEST_BYTES = 64 * 1024  # a registration is a few hundred bytes
REGISTRY_BODY_TIMEOUT_S = 10.0
MUTATING_ROUTES = frozenset({("POST", "/register"), ("POST", "/deregister"), ("POST", "/shutdown")})


class ServerInfo(BaseModel):
    """One running server as the registry knows it."""

    name: str
    kind: str
    url: str
    pid: int
    restarts: int = 0  # how often the launcher restarted it (kept by the registry, not sent by the server)


class Deregistration(BaseModel):
    """Body of POST /deregister."""

    name: str


class Registry:
    """The name -> ServerInfo table; thread-safe because the launcher reads it from another thread."""

    def __init__(self, on_shutdown: Callable[[], None] | None = None, auth: StackAuth | None = None) -> None:
        self._servers: dict[str, ServerInfo] = {}
        self._restarts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._on_shutdown = on_shutdown
        self.auth = auth or StackAuth()

    def get(self, name: str) -> ServerInfo | None:
        """The registered server called `name`, if any."""
        with self._lock:
            return self._servers.get(name)

    def all(self) -> list[ServerInfo]:
        """Every registered server, in registration order."""
        with self._lock:
            return list(self._servers.values())

    def register(self, info: ServerInfo) -> ServerInfo | None:
        """Record `info`; returns the live holder of its name instead when another process has it."""
        with self._lock:
            held = self._servers.get(info.name)
            if held is not None and held.pid != info.pid and _alive(held.pid):
                return held
            self._servers[info.name] = info.model_copy(update={"restarts": self._restarts.get(info.name, 0)})
            return None

    def exited(self, name: str, pid: int) -> None:
        """The launcher saw process `pid` of `name` exit: drop its entry (unless a newer process registered)."""
        with self._lock:
            info = self._servers.get(name)
            if info is not None and info.pid == pid:
                del self._servers[name]

    def restarted(self, name: str) -> None:
        """Count one restart of `name` (GET /servers shows it as `restarts`)."""
        with self._lock:
            self._restarts[name] = self._restarts.get(name, 0) + 1

    def deregister(self, name: str) -> None:
        """Forget a server (it stopped)."""
        with self._lock:
            self._servers.pop(name, None)

    def shutdown(self) -> bool:
        """Ask the launcher to stop the stack; False when nothing is listening for that."""
        if self._on_shutdown is None:
            return False
        self._on_shutdown()
        return True

    def build_app(self, body_timeout_s: float = REGISTRY_BODY_TIMEOUT_S) -> FastAPI:
        """The registry's HTTP routes, behind the common edge."""
        server = RegistryServer(self, body_timeout_s)
        server.auth = self.auth
        return server.build_app()


class RegistryServer(GymServer):
    """The registry's routes as a GymServer, so it gets the edge every other server has."""

    kind: ClassVar[str] = "registry"
    admin_routes: ClassVar[frozenset[tuple[str, str]]] = MUTATING_ROUTES

    def __init__(self, registry: Registry, body_timeout_s: float = REGISTRY_BODY_TIMEOUT_S) -> None:
        super().__init__("registry", {"max_request_bytes": REGISTRY_MAX_REQUEST_BYTES,
                                      "body_timeout_s": body_timeout_s})
        self.registry = registry

    def add_routes(self, app: FastAPI) -> None:
        """Register the registry's routes (plain endpoints: JSON parsed with orjson, errors as our envelope)."""
        app.add_api_route("/servers", self._list, methods=["GET"])
        app.add_api_route("/register", self._register, methods=["POST"])
        app.add_api_route("/deregister", self._deregister, methods=["POST"])
        app.add_api_route("/shutdown", self._shutdown, methods=["POST"])
        app.add_api_route("/servers/{name}", self._get, methods=["GET"])
        add_head_routes(app, self.registry)

    async def _list(self, request: Request) -> Response:
        return Response(dumps(self.registry.all()), media_type="application/json")

    async def _get(self, name: str) -> JSONResponse:
        info = self.registry.get(name)
        if info is None:
            known = ", ".join(s.name for s in self.registry.all()) or "none"
            return error_response(404, f"no server named '{name}' is registered (registered: {known})")
        return JSONResponse(info)

    async def _register(self, request: Request) -> Response:
        refused = _cross_site(request)
        if refused is not None:
            return refused
        try:
            info = ServerInfo.model_validate(loads(await request.body()))
        except (ValidationError, ValueError) as err:
            return _invalid("/register", err)
        held = self.registry.register(info)
        if held is not None:
            return error_response(409, f"server name {info.name!r} is held by pid {held.pid} at {held.url}; stop "
                                       "that server first, or give this one another name")
        return JSONResponse({})

    async def _deregister(self, request: Request) -> Response:
        refused = _cross_site(request)
        if refused is not None:
            return refused
        try:
            body = Deregistration.model_validate(loads(await request.body()))
        except (ValidationError, ValueError) as err:
            return _invalid("/deregister", err)
        self.registry.deregister(body.name)
        return JSONResponse({})

    async def _shutdown(self, request: Request) -> Response:
        refused = _cross_site(request)
        if refused is not None:
            return refused
        if not self.registry.shutdown():
            return error_response(409, "nothing to shut down", "unsupported")
        return JSONResponse({"status": "stopping"})


def _cross_site(request: Request) -> Response | None:
    """A 403 for what a web page in a browser could send: a foreign Origin, a cross-site fetch, a non-JSON body."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        return error_response(403, f"the registry refuses changes from a web page (Origin {origin[:100]})")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return error_response(403, "the registry refuses cross-site changes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return error_response(415, "the registry's changes take a JSON body: send content-type: application/json",
                              "unsupported_media_type")
    return None


def _invalid(route: str, err: Exception) -> JSONResponse:
    detail = describe_validation_error(err) if isinstance(err, ValidationError) else f"body is not JSON ({err})"
    return error_response(422, f"{route}: {detail}")


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists here (a crashed server's name can be taken over)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RegistryService:
    """Serves a Registry with uvicorn on a background thread of this process."""

    def __init__(self, registry: Registry, port: int = 0, host: str = "127.0.0.1") -> None:
        self.registry = registry
        registry.auth = registry.auth.for_host(host)
        self._socket = _bind(host, port)
        bound_host, bound_port = self._socket.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._server = uvicorn_server(registry.build_app(), log_level="warning", timeout_graceful_shutdown=2)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="gym-registry", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the registry accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"registry did not start on {self.url} within {timeout:.0f}s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    """Bind the registry's listening socket here, so a taken port fails fast with a clear message."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} for the registry ({exc.strerror}); is another `gym up` "
                      "running? Try `gym status`, or `gym up --registry-port 0` for a free port") from None
    sock.listen(2048)
    return sock
