"""Keep a launched stack alive: restart a server that exits, per its `restart:` policy, instead of stopping all.

```yaml
servers:
  policy: {kind: policy, engine: native, restart: {when: on-failure, max_restarts: 5, window_s: 600}}
```
A thread of the launcher polls every server process. When one exits, its registry entry is dropped at once (so
clients stop calling a dead URL and see "not registered" while it is down), and if its policy allows, a new
process is started after a backoff (`backoff_s`, doubling with each recent restart, at most `max_backoff_s`).
The new process binds a new port and registers it; clients look the name up again (`ServiceClient` forgets a
URL after a refused connection). More than `max_restarts` exits within `window_s` seconds, an exit the policy
does not cover, or a restart that does not become healthy in time gives up: the launcher then stops the stack
as before (`gym up` exits 1 with the server's last log lines). `gym status` shows each server's restarts.
The same supervisor watches servers the Ray backend placed (gym_core/ray_launcher.py): a server is anything with
the `Supervised` surface, and the launcher passes how to start a new process for it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from gym_core.config import RestartPolicy
from gym_core.registry import Registry

log = logging.getLogger(__name__)

POLL_S = 0.2


class _Polled(Protocol):
    def poll(self) -> int | None: ...


class Supervised(Protocol):
    """A started server as the supervisor sees it (gym_core.launcher.ServerProcess, or a Ray-placed server)."""

    name: str
    url: str | None
    restarts: int
    health_path: str

    @property
    def process(self) -> _Polled: ...

    @property
    def pid(self) -> int: ...

    def kill(self) -> None:
        """SIGKILL the server's process group: what a dead server started must not outlive it."""


@dataclass
class _Watch:
    """What the supervisor knows about one server between polls."""

    policy: RestartPolicy
    exits: collections.deque[float] = field(default_factory=collections.deque)  # restarts inside the window
    respawn_at: float | None = None  # waiting out the backoff
    starting_since: float | None = None  # a restarted process not yet registered and healthy


class Supervisor:
    """Watches the stack's processes from a thread; restarts, or gives up through `on_give_up(server, why)`."""

    def __init__(self, servers: dict[str, Supervised], policies: dict[str, RestartPolicy], registry: Registry,
                 respawn: Callable[[Supervised], None], on_give_up: Callable[[Supervised, str], None],
                 start_timeout: float) -> None:
        self.servers = servers
        self.registry = registry
        self._watch = {name: _Watch(policies[name]) for name in servers}
        self._respawn = respawn
        self._on_give_up = on_give_up
        self._start_timeout = start_timeout
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gym-supervisor", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the launcher stops the processes, so nothing is restarted meanwhile)."""
        self._halt.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while not self._halt.wait(POLL_S):
                for server in self.servers.values():
                    if self._halt.is_set():
                        return
                    self._check(server, http)

    def _check(self, server: Supervised, http: httpx.Client) -> None:
        watch, now = self._watch[server.name], time.monotonic()
        if watch.respawn_at is not None:
            if now >= watch.respawn_at:
                watch.respawn_at, watch.starting_since = None, now
                try:
                    self._respawn(server)
                except Exception as exc:  # noqa: BLE001  # e.g. no room on the cluster now: the stack cannot go on
                    self._give_up(server, f"could not be restarted: {exc}")
                    return
                self.registry.restarted(server.name)
                server.restarts += 1
            return
        code = server.process.poll()
        if code is None and watch.starting_since is not None:
            if self._came_up(server, http):
                watch.starting_since = None
                log.warning("server %r restarted at %s (pid %d, restart %d)", server.name, server.url, server.pid,
                            server.restarts)
                return
            if now - watch.starting_since <= self._start_timeout:
                return
            log.warning("server %r did not register and pass GET /health within %.0f s of its restart; killing it",
                        server.name, self._start_timeout)
            server.kill()
            code = self._exit_code(server)
        if code is not None:
            self._exited(server, watch, code, now)

    def _came_up(self, server: Supervised, http: httpx.Client) -> bool:
        info = self.registry.get(server.name)
        if info is None or info.pid != server.pid:
            return False
        try:
            healthy = http.get(f"{info.url}{server.health_path}").status_code == 200
        except httpx.HTTPError:
            return False
        if healthy:
            server.url = info.url
        return healthy

    def _exited(self, server: Supervised, watch: _Watch, code: int, now: float) -> None:
        server.kill()  # what the dead server started (worker pools) must not outlive it
        self.registry.exited(server.name, server.pid)
        watch.starting_since = None
        policy = watch.policy
        while watch.exits and now - watch.exits[0] > policy.window_s:
            watch.exits.popleft()
        if not policy.covers(code):
            self._give_up(server, f"exited with code {code} (restart.when={policy.when})")
            return
        if len(watch.exits) >= policy.max_restarts:
            self._give_up(server, f"exited with code {code}: {len(watch.exits) + 1} exits within {policy.window_s:g} s "
                                  f"are more than restart.max_restarts={policy.max_restarts} allows")
            return
        delay = min(policy.backoff_s * 2 ** len(watch.exits), policy.max_backoff_s)
        watch.exits.append(now)
        watch.respawn_at = now + delay
        log.warning("server %r (pid %d) exited with code %d; restarting it in %.1f s (restart %d of at most %d "
                    "within %g s)", server.name, server.pid, code, delay, len(watch.exits), policy.max_restarts,
                    policy.window_s)

    def _give_up(self, server: Supervised, why: str) -> None:
        self._halt.set()
        self._on_give_up(server, why)

    @staticmethod
    def _exit_code(server: Supervised) -> int:
        """The exit code of a process just killed (it may take a moment to be reaped)."""
        deadline = time.monotonic() + 10
        while (code := server.process.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return -9 if code is None else code
