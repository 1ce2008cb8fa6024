"""Start every server of a config as its own process, find them through the registry, stop them all.

```python
with launch("examples/quickstart.yaml", overrides=["servers.agent.max_steps=4"], registry_port=0) as stack:
    stack.registry_url             # http://127.0.0.1:<port>
    stack.servers["agent"].url     # each server's base URL, pid, kind and recent log lines
```
Each server runs `python -m gym_core.serve` in its own process group, binds a free port itself and
registers; `launch` returns once every server is registered and answers GET /health. From then on a
server that exits is restarted per its `restart:` policy (gym_core/supervisor.py); `Stack.wait()` returns
when a stop is requested or a server's policy gives up. On leaving the block (normally, on an exception
or on Ctrl-C) every process gets SIGTERM, then SIGKILL after a grace period. A server that exits or hangs
during start raises LaunchError with its last log lines.

The stack token (`gym_core.auth`) is the config's `auth_token`, else $GYM_AUTH_TOKEN, else drawn at random; it is
written to a file only the user can read, and `stack.auth.headers()` gives the header a client sends. Each
server's config reaches it through a pipe on its stdin, never its environment or command line, and the
environment variables that fed a secret-looking key (`api_key: ${env:OPENAI_API_KEY}`) are left out of the
servers' environments.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from gym_core import external
from gym_core.auth import AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV, StackAuth, new_token, remove_token, write_token
from gym_core.client import REGISTRY_URL_ENV
from gym_core.config import GymConfig, ServerSpec, load_config
from gym_core.registry import Registry, RegistryService
from gym_core.supervisor import Supervisor

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 40

_echo_lock = threading.Lock()


class LaunchError(RuntimeError):
    """A server could not be started; the message carries its last log lines."""


@dataclass
class ServerProcess:
    """One started server: its process, its URL once registered, and its recent log lines."""

    name: str
    kind: str
    process: subprocess.Popen
    url: str | None = None
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    reader: threading.Thread | None = None
    restarts: int = 0  # processes started after the first (the supervisor's doing)
    health_path: str = "/health"  # answers 200 once the server is up

    @property
    def pid(self) -> int:
        """The server's process id (also its process group id)."""
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the server's process group (the server and what it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """The last log lines, indented, for error messages."""
        if self.reader is not None:
            self.reader.join(timeout=2)  # the pipe drains once the process is gone
        recent = list(self.log)[-lines:] or ["(no output)"]
        return "\n".join(f"    {line}" for line in recent)


@dataclass(frozen=True)
class StackEnv:
    """What every server process of a stack is started with."""

    registry_url: str
    token_file: Path
    auth_required: bool
    environ: dict[str, str] = field(repr=False)  # the launcher's environment minus the secrets it delivers itself


@dataclass
class Stack:
    """A running set of servers and the registry that knows them."""

    config: GymConfig
    registry_url: str
    servers: dict[str, ServerProcess]
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    auth: StackAuth = field(default_factory=StackAuth)  # the stack token; `auth.headers()` for a client
    token_file: Path | None = None
    # The server whose restart policy gave up, and why; `wait()` hands it over once.
    failed: ServerProcess | None = field(default=None, repr=False)
    failure: str = ""

    def url(self, name: str) -> str:
        """Base URL of the server called `name`."""
        url = self.servers[name].url
        assert url is not None, "launch() yields only after every server registered"
        return url

    def request_stop(self) -> None:
        """Make `wait()` return (what `gym down` does through POST /shutdown on the registry)."""
        self._stop.set()

    def give_up(self, server: ServerProcess, why: str) -> None:
        """A server is down for good (its restart policy gave up): make `wait()` return it."""
        self.failed, self.failure = server, why
        self._stop.set()

    def wait(self, poll_s: float = 0.5) -> ServerProcess | None:
        """Block until a stop is requested (returns None) or a server is down for good (returns it, once)."""
        while not self._stop.wait(poll_s):
            pass
        failed, self.failed = self.failed, None
        if failed is not None:
            self._stop.clear()  # handed over; a later wait() blocks until the next stop request
        return failed

    def table(self) -> str:
        """Name, kind, URL and pid of every server, one aligned row each."""
        rows = [[s.name, s.kind, s.url or "-", str(s.pid)] for s in self.servers.values()]
        return format_table(["NAME", "KIND", "URL", "PID"], rows)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


@contextlib.contextmanager
def launch(
    config: str | Path | GymConfig,
    overrides: Sequence[str] = (),
    *,
    registry_port: int = 0,
    registry_host: str = "127.0.0.1",
    start_timeout: float = START_TIMEOUT_S,
    stop_grace: float = STOP_GRACE_S,
    echo_logs: bool = True,
    ray_address: str | None = None,
) -> Iterator[Stack]:
    """Start the registry and every server of `config`; yields a Stack once all are healthy; always stops them.
    With `launcher: {backend: ray}` in the config (or `ray_address`) the servers are placed on a Ray cluster
    (gym_core/ray_launcher.py)."""
    resolved = load_config(config, overrides)
    from gym_core.ray_launcher import launch_on_ray, launcher_settings  # imports ray only when used

    settings = launcher_settings(resolved, ray_address)
    if settings.backend == "ray":
        external.refuse_on_ray(resolved)
        with launch_on_ray(resolved, settings, registry_port=registry_port, start_timeout=start_timeout,
                           stop_grace=stop_grace) as stack:
            yield stack
        return
    processes: dict[str, ServerProcess] = {}
    stop = threading.Event()
    auth = StackAuth(stack_token(resolved), required=resolved.auth == "required")
    service = RegistryService(Registry(on_shutdown=stop.set, auth=auth), registry_port, registry_host)
    token_file: Path | None = None
    supervisor: Supervisor | None = None
    try:
        service.start()
        token_file = write_token(service.url, auth.token or "")
        env = StackEnv(service.url, token_file, auth.required, _server_environ(resolved))
        width = max(len(name) for name in resolved.servers)
        for name, spec in resolved.servers.items():
            processes[name] = _start(name, spec, service.registry, env, echo_logs, width)
        blocks = [spec.block() for spec in resolved.servers.values()]
        wait_until_healthy(processes, service.registry, max(start_timeout, external.start_timeout(blocks)))
        stack = Stack(resolved, service.url, processes, stop, auth, token_file)

        def respawn(server: ServerProcess) -> None:
            fresh = _start(server.name, resolved.servers[server.name], service.registry, env, echo_logs, width)
            server.process, server.reader, server.log = fresh.process, fresh.reader, fresh.log

        policies = {name: spec.restart for name, spec in resolved.servers.items()}
        supervisor = Supervisor(processes, policies, service.registry, respawn, stack.give_up, start_timeout)
        supervisor.start()
        yield stack
    finally:
        if supervisor is not None:
            supervisor.stop()  # first, so nothing is restarted while the stack stops
        stop_processes(list(processes.values()), stop_grace)
        service.stop()
        if token_file is not None:
            remove_token(token_file)


def stack_token(config: GymConfig) -> str:
    """The stack's token: the config's `auth_token`, else $GYM_AUTH_TOKEN, else a new random one."""
    if config.auth_token is not None:
        return config.auth_token.get_secret_value()
    return os.environ.get(AUTH_TOKEN_ENV) or new_token()


def _server_environ(config: GymConfig) -> dict[str, str]:
    """The launcher's environment without the secrets servers get another way (their config, the token file)."""
    dropped = {AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV, *config.secret_env_vars}
    return {key: value for key, value in os.environ.items() if key not in dropped}


def _start(name: str, spec: ServerSpec, registry: Registry, stack: StackEnv, echo: bool, width: int) -> ServerProcess:
    """Start one server: an external command (gym_core/external.py), or `python -m gym_core.serve`."""
    if spec.kind == "external":  # any command; registered on its behalf once healthy
        return external.spawn(name, spec.block(), registry, stack, echo, width)
    server = ServerProcess(name, spec.kind, _spawn(name, spec.block(), stack))
    _read_output(server, echo, width)
    return server


def _spawn(name: str, block: dict, stack: StackEnv) -> subprocess.Popen:
    """Start one `python -m gym_core.serve` in its own process group, its config piped to its stdin."""
    env = {**stack.environ, REGISTRY_URL_ENV: stack.registry_url, AUTH_TOKEN_FILE_ENV: str(stack.token_file),
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gym_core.serve"], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
    )
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a server that died at import says why in its log
        with process.stdin:
            process.stdin.write(json.dumps({"name": name, "spec": block, "auth_required": stack.auth_required}))
    return process


def _read_output(server: ServerProcess, echo: bool, width: int) -> None:
    """A thread keeping the server process's last log lines."""
    prefix = f"{server.name:<{width}} | " if echo else None
    server.reader = threading.Thread(target=_read_log, args=(server.process.stdout, server.log, prefix),
                                     name=f"log-{server.name}", daemon=True)
    server.reader.start()


def _read_log(stream: IO[str], tail: collections.deque, prefix: str | None) -> None:
    """Keep the last lines of a child's output; echo each to stderr with the server's name in front."""
    with stream:
        for line in stream:
            line = line.rstrip("\n")
            tail.append(line)
            if prefix is not None:
                with _echo_lock:
                    sys.stderr.write(f"{prefix}{line}\n")
                    sys.stderr.flush()


def wait_until_healthy(servers: Mapping[str, Any], registry: Registry, timeout: float, *,
                       error: type[LaunchError] = LaunchError, poll_s: float = 0.05) -> None:
    """Return once every server registered and answers its health path; `error` if one dies or hangs.

    `servers` hold a `process` with `poll()` and a `tail()` (local processes and Ray-placed ones alike); a server's
    `health_path` (default /health) and its process's `host` (where it runs, if not here) are used when present.
    """
    deadline = time.monotonic() + timeout
    pending = dict(servers)
    with httpx.Client(timeout=2.0, headers=registry.auth.headers(), trust_env=False) as http:
        while pending:
            for name, server in list(pending.items()):
                code = server.process.poll()
                if code is not None:
                    host = getattr(server.process, "host", None)
                    where = f" on {host}" if host else ""
                    raise error(f"server '{name}' exited with code {code} while starting{where}; "
                                f"its last log lines:\n{server.tail()}")
                info = registry.get(name)
                if info is not None and _healthy(http, info.url + getattr(server, "health_path", "/health")):
                    server.url = info.url
                    del pending[name]
            if pending and time.monotonic() > deadline:
                details = "\n".join(f"  {name}:\n{s.tail(10)}" for name, s in pending.items())
                raise error(f"timed out after {timeout:.0f}s waiting for {', '.join(pending)} to register "
                            f"and pass GET /health; last log lines:\n{details}")
            time.sleep(poll_s)


def _healthy(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def stop_processes(servers: list[ServerProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every server's process group, SIGKILL what is left after `grace` seconds, and reap them."""
    for server in servers:
        if server.process.poll() is None:
            _signal_group(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for server in servers:
        try:
            server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(server.pid, signal.SIGKILL)
            server.process.wait()
        _signal_group(server.pid, signal.SIGKILL)  # anything the server itself started and left behind
        if server.reader is not None:
            server.reader.join(timeout=2)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
