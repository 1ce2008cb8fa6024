"""Run one server: `python -m gym_core.serve`, configured by the launcher through a pipe on its stdin.

The launcher writes one JSON object, `{"name", "spec", "auth_required"}` (the instance name, its resolved config
block, and whether every route needs the stack token), then closes the pipe: the config, secrets included, never
appears in the process's environment or command line. GYM_REGISTRY_URL says where to register, and
GYM_AUTH_TOKEN_FILE names the file holding the stack token (only its path is in the environment), GYM_BIND_HOST
the address to serve on (127.0.0.1 unless the Ray backend places the server on a node: then that node's
address). The process binds 127.0.0.1:0 itself (no pick-then-bind race), serves the app with uvicorn on that
socket, registers its URL once it accepts connections, and deregisters when it stops (SIGTERM or SIGINT:
graceful shutdown, exit code 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
from typing import IO, Any

import httpx
from pydantic import ValidationError

from gym_core.auth import AUTH_TOKEN_FILE_ENV, AuthError, StackAuth, find_token
from gym_core.client import DEFAULT_REGISTRY_URL, REGISTRY_URL_ENV, ServerError, close_client, get_client
from gym_core.gc_tuning import tune_gc
from gym_core.keepalive import DEFAULT_KEEP_ALIVE_S
from gym_core.server import GymServer, bind_socket, uvicorn_server

BIND_HOST_ENV = "GYM_BIND_HOST"


class ServeError(RuntimeError):
    """A problem starting the server that the user can fix from the config."""


def default_entrypoint(spec: dict[str, Any]) -> str:
    """Where a server's class lives when its block has no `entrypoint:`."""
    kind = spec.get("kind")
    if kind == "resources":
        return f"environments.{spec['env']}.app"
    if kind == "agent":
        return f"servers.agents.{spec['impl']}"
    if kind == "policy":
        return "servers.policy.server:PolicyServer"
    raise ServeError(f"unknown kind {kind!r}")


def load_server_class(entrypoint: str) -> type[GymServer]:
    """Import `module:Class`, or the single GymServer subclass defined in `module`."""
    module_name, _, attr = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        cls = getattr(module, attr, None)
        if cls is None:
            raise ServeError(f"entrypoint {entrypoint}: module {module_name} has no attribute {attr!r}")
    else:
        found = [obj for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, GymServer) and obj.__module__ == module.__name__]
        if len(found) != 1:
            names = ", ".join(c.__name__ for c in found) or "none"
            raise ServeError(f"entrypoint {entrypoint}: expected exactly one GymServer subclass defined in "
                             f"{module_name}, found {names}; write the entrypoint as {module_name}:ClassName")
        cls = found[0]
    if not (isinstance(cls, type) and issubclass(cls, GymServer)):
        raise ServeError(f"entrypoint {entrypoint}: {cls!r} is not a subclass of gym_core.server.GymServer")
    return cls


def build_server(name: str, spec: dict[str, Any]) -> GymServer:
    """Instantiate the server class a config block names, checking its kind."""
    cls = load_server_class(spec.get("entrypoint") or default_entrypoint(spec))
    declared = getattr(cls, "kind", None)
    if declared != spec.get("kind"):
        raise ServeError(f"{cls.__module__}.{cls.__name__} is a {declared} server but the config says "
                         f"kind: {spec.get('kind')}")
    try:
        return cls(name, spec)
    except ValidationError as exc:
        lines = [f"servers.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ServeError("invalid config:\n  " + "\n  ".join(lines)) from None


async def _post_registry(registry_url: str, path: str, body: dict[str, Any]) -> None:
    """POST to the registry with the process's one client (timeout, bounded retries, the stack token)."""
    await get_client().post_json(registry_url, path, body, timeout=5.0)


async def _serve(uv: Any, sock: Any) -> int:
    """uvicorn's serve(); its sys.exit() when the app's startup fails becomes a return code (already logged)."""
    try:
        await uv.serve(sockets=[sock])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


async def _stop_when_orphaned(uv: Any) -> None:
    """Shut down if the launcher dies without stopping us (e.g. SIGKILL): no server outlives its launcher."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    uv.should_exit = True


async def run(server: GymServer, registry_url: str, host: str = "127.0.0.1") -> None:
    """Serve `server` on a fresh port of `host` until SIGTERM/SIGINT, registered for exactly that time.

    Bound beyond loopback (`host` 0.0.0.0 or a LAN address, as a cluster placement does), every route but /health
    needs the stack token, whatever `auth:` says.
    """
    server.auth = server.auth.for_host(host)
    sock = bind_socket(host, 0)
    url = f"http://{host}:{sock.getsockname()[1]}"
    uv = uvicorn_server(server.build_app(), log_level=os.environ.get("GYM_LOG_LEVEL", "info"),
                        timeout_graceful_shutdown=5,
                        timeout_keep_alive=getattr(server.config, "keep_alive_s", DEFAULT_KEEP_ALIVE_S))

    def stop(signum: int, frame: Any) -> None:
        uv.should_exit = True

    # uvicorn installs its own handlers while serving and re-raises the signal after shutting down;
    # ours make that re-raise harmless, so we get to deregister and exit 0.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    serving = asyncio.create_task(_serve(uv, sock))
    watchdog = asyncio.create_task(_stop_when_orphaned(uv))
    while not uv.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        watchdog.cancel()
        raise ServeError(f"the server's startup failed (exit code {serving.result()}); its error is logged above")
    info = {"name": server.name, "kind": server.kind, "url": url, "pid": os.getpid()}
    try:
        await _post_registry(registry_url, "/register", info)
    except (httpx.HTTPError, ServerError) as exc:
        uv.should_exit = True
        await serving
        raise ServeError(f"could not register with the registry at {registry_url}: {exc!r}") from None
    print(f"serving {server.kind} server {server.name!r} at {url} (pid {os.getpid()})", flush=True)
    try:
        await serving
    finally:
        watchdog.cancel()
        with contextlib.suppress(httpx.HTTPError, ServerError):  # the registry may be gone: nothing left to tell
            await _post_registry(registry_url, "/deregister", {"name": server.name})
        await close_client()


def _loop_factory() -> Any:
    """uvloop's event loop when it is installed (it is with uvicorn[standard]), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def read_launch_request(stream: IO[str]) -> tuple[str, dict[str, Any], bool]:
    """(name, config block, auth_required) from the launcher's JSON on `stream`."""
    if stream.isatty():
        raise ServeError("gym_core.serve is started by the launcher (`gym up`), which pipes its config on stdin: "
                         'echo \'{"name": "weather", "spec": {"kind": "resources", "env": "weather"}}\' | '
                         "python -m gym_core.serve")
    try:
        request = json.loads(stream.read())
        return str(request["name"]), dict(request["spec"]), bool(request.get("auth_required", False))
    except (ValueError, KeyError, TypeError) as exc:
        raise ServeError(f"stdin must hold one JSON object with `name` and `spec` ({exc!r})") from None


def main() -> None:
    """Entry point of `python -m gym_core.serve`."""
    name = "gym_core.serve"
    registry_url = os.environ.get(REGISTRY_URL_ENV, DEFAULT_REGISTRY_URL)
    tune_gc()  # -25-35% CPU per rollout at 1,024 in flight (gym_core/gc_tuning.py)
    try:
        name, spec, auth_required = read_launch_request(sys.stdin)
        sys.stdin.close()
        server = build_server(name, spec)
        server.auth = StackAuth(find_token(registry_url), required=auth_required)
        if auth_required and server.auth.token is None:
            raise ServeError(f"auth: required but no stack token: set {AUTH_TOKEN_FILE_ENV}")
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run(server, registry_url, os.environ.get(BIND_HOST_ENV) or "127.0.0.1"))
    except (ServeError, AuthError) as exc:
        sys.exit(f"{name}: {exc}")


if __name__ == "__main__":
    main()
