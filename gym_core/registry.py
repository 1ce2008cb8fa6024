"""The registry: which server name is at which URL. A tiny HTTP service run inside the launcher process.

Routes: `POST /register {name, kind, url, pid}`, `POST /deregister {name}`, `GET /servers`,
`GET /servers/{name}`, `GET /health`, and `POST /shutdown` (what `gym down` calls: the launcher then
stops every server it started).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ServerInfo(BaseModel):
    """One running server as the registry knows it."""

    name: str
    kind: str
    url: str
    pid: int


class Deregistration(BaseModel):
    """Body of POST /deregister."""

    name: str


class Registry:
    """The name -> ServerInfo table; thread-safe because the launcher reads it from another thread."""

    def __init__(self, on_shutdown: Callable[[], None] | None = None) -> None:
        self._servers: dict[str, ServerInfo] = {}
        self._lock = threading.Lock()
        self._on_shutdown = on_shutdown

    def get(self, name: str) -> ServerInfo | None:
        """The registered server called `name`, if any."""
        with self._lock:
            return self._servers.get(name)

    def register(self, info: ServerInfo) -> None:
        """Record a server (what POST /register does; the launcher calls it for servers it registers itself)."""
        with self._lock:
            self._servers[info.name] = info

    def all(self) -> list[ServerInfo]:
        """Every registered server, in registration order."""
        with self._lock:
            return list(self._servers.values())

    def build_app(self) -> FastAPI:
        """The registry's HTTP routes."""
        app = FastAPI(title="gym registry", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/health")
        @app.get("/")
        async def health() -> dict:
            return {"status": "ok", "name": "registry", "kind": "registry"}

        @app.post("/register")
        async def register(info: ServerInfo) -> dict:
            with self._lock:
                self._servers[info.name] = info
            return {}

        @app.post("/deregister")
        async def deregister(body: Deregistration) -> dict:
            with self._lock:
                self._servers.pop(body.name, None)
            return {}

        @app.get("/servers")
        async def list_servers() -> list[ServerInfo]:
            return self.all()

        @app.get("/servers/{name}", response_model=None)
        async def get_server(name: str) -> ServerInfo | JSONResponse:
            info = self.get(name)
            if info is None:
                known = ", ".join(s.name for s in self.all()) or "none"
                message = f"no server named '{name}' is registered (registered: {known})"
                return JSONResponse({"error": {"type": "not_found", "message": message}}, status_code=404)
            return info

        @app.post("/shutdown", response_model=None)
        async def shutdown() -> dict | JSONResponse:
            if self._on_shutdown is None:
                return JSONResponse({"error": {"type": "unsupported", "message": "nothing to shut down"}}, 409)
            self._on_shutdown()
            return {"status": "stopping"}

        return app


class RegistryService:
    """Serves a Registry with uvicorn on a background thread of this process."""

    def __init__(self, registry: Registry, port: int = 0, host: str = "127.0.0.1") -> None:
        self.registry = registry
        self._socket = _bind(host, port)
        bound_host, bound_port = self._socket.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        config = uvicorn.Config(registry.build_app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
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
