"""The `ray` launcher backend: every server of a config runs on a Ray cluster, each a process started by its own
Ray actor, placed with the resources its block asks for.

```yaml
launcher: {backend: ray, address: auto}        # or: gym up config.yaml --ray auto   (or ray://..., host:port)
servers:
  policy: {kind: policy, engine: native, num_gpus: 1, node_labels: {accelerator: h100}}
  weather: {kind: resources, env: weather, num_cpus: 2}
```

A server block's `num_cpus` (default 0: servers mostly wait on the network), `num_gpus`, `node_labels` (a Ray
label selector) and `resources` (custom Ray resources) become its actor's options; Ray picks the node. The
actor (`ServerHost`) starts `python -m gym_core.serve` there, bound to that node's address, and the server
registers its URL with the registry, which runs in the launching process on the driver's address (and on
127.0.0.1, so `gym status` / `gym down` work as they do locally). Stopping the stack stops each process (SIGTERM,
then SIGKILL after the grace period) and kills its actor; an actor that dies takes its server with it (the
server exits when its parent does). A server that exits (or whose actor dies) is restarted per its `restart:`
policy by the same supervisor as local servers (gym_core/supervisor.py): a new actor, placed as the first was.

A server reachable beyond loopback must require the stack's auth token: each block placed on Ray is handed
`auth: required` (`placed_block`), which the servers' edge enforces; the token itself reaches the process
through `ServerHost`'s `secrets` (never a command line or the environment of other processes).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gym_core.auth import AUTH_TOKEN_FILE_ENV, StackAuth, remove_token, write_token
from gym_core.client import REGISTRY_URL_ENV
from gym_core.config import ConfigError, GymConfig
from gym_core.launcher import LaunchError, Stack, stack_token, wait_until_healthy
from gym_core.registry import Registry, RegistryService
from gym_core.serve import BIND_HOST_ENV
from gym_core.server import describe_validation_error
from gym_core.supervisor import Supervisor

PLACEMENT_KEYS = ("num_cpus", "num_gpus", "node_labels", "resources")
FORWARDED_ENV = ("PYTHONPATH", "GYM_LOG_LEVEL")  # what the launching shell sets that a placed server needs too
LOG_TAIL_LINES = 40


class RayLaunchError(LaunchError):
    """The cluster could not place or start a server; the message says what it asked for and what is free."""


class LauncherSettings(BaseModel):
    """The config's `launcher:` block."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "ray"] = "local"
    address: str | None = None  # Ray's: "auto", "host:port" of the GCS, "ray://host:10001"; None starts a local one


def launcher_settings(config: GymConfig, ray_address: str | None = None) -> LauncherSettings:
    """The config's `launcher:` block; `--ray ADDRESS` selects the Ray backend whatever the block says."""
    raw = (config.model_extra or {}).get("launcher") or {}
    try:
        settings = LauncherSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"launcher: {describe_validation_error(exc)} (expected {{backend: local|ray, "
                          "address: ...}})") from None
    if ray_address is not None:
        settings = LauncherSettings(backend="ray", address=ray_address)
    return settings


class Placement(BaseModel):
    """What one server block asks Ray for."""

    model_config = ConfigDict(extra="ignore")

    num_cpus: float = Field(0.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    node_labels: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, float] = Field(default_factory=dict)

    def actor_options(self, name: str, incarnation: int = 0) -> dict[str, Any]:
        """Options for `ServerHost.options(...)`; `incarnation` counts the server's restarts (actor names are
        unique)."""
        actor = f"gym-server-{name}-{os.getpid()}" + (f"-{incarnation}" if incarnation else "")
        # Ray itself never restarts the actor: the supervisor does, so the restart policy and count stay in one place.
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "name": actor,
                                   "max_restarts": 0}
        if self.node_labels:
            options["label_selector"] = self.node_labels
        if self.resources:
            options["resources"] = self.resources
        return options


def placed_block(block: dict[str, Any]) -> dict[str, Any]:
    """The block a placed server gets: placement keys removed, and `auth: required` (it listens beyond loopback)."""
    return {**{k: v for k, v in block.items() if k not in PLACEMENT_KEYS}, "auth": "required"}


class ServerHost:
    """A Ray actor that runs one server process on its node and reports on it (see the module docstring)."""

    def __init__(self, name: str, block: dict[str, Any], registry_url: str, env: dict[str, str],
                 secrets: dict[str, str] | None = None) -> None:
        import ray

        self.name, self.block, self.registry_url = name, block, registry_url
        self.env, self.secrets = env, dict(secrets or {})
        self.host = ray.util.get_node_ip_address()
        self.process: subprocess.Popen | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)

    def start(self) -> dict[str, Any]:
        """Start the server process bound to this node's address; returns its pid and the address."""
        env = {**os.environ, **self.env, REGISTRY_URL_ENV: self.registry_url, BIND_HOST_ENV: self.host,
               "PYTHONUNBUFFERED": "1"}
        if self.secrets.get("token"):  # a 0600 file on this node; the process's environment names only its path
            env[AUTH_TOKEN_FILE_ENV] = str(write_token(self.registry_url, self.secrets["token"]))
        self.process = subprocess.Popen([sys.executable, "-m", "gym_core.serve"], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", start_new_session=True)
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError), self.process.stdin:  # the config never enters the environment
            self.process.stdin.write(json.dumps({"name": self.name, "spec": self.block, "auth_required": True}))
        threading.Thread(target=self._read_log, daemon=True, name=f"log-{self.name}").start()
        return {"pid": self.process.pid, "host": self.host}

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.process.stdout as stream:
            for line in stream:
                self.log.append(line.rstrip("\n"))

    def poll(self) -> int | None:
        """The process's exit code, None while it runs."""
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines the server printed."""
        return list(self.log)[-lines:]

    def stop(self, grace: float) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after `grace` seconds; returns the exit code."""
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything the server started and left behind
        return self.process.returncode


class RemoteProcess:
    """The `subprocess.Popen` surface the launcher and `gym up` use (pid, poll, returncode), for a placed server."""

    def __init__(self, actor: Any, pid: int, host: str) -> None:
        self.actor, self.pid, self.host = actor, pid, host
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code, None while running; an actor that died counts as exit code -9."""
        if self.returncode is None:
            import ray

            try:
                self.returncode = ray.get(self.actor.poll.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self.returncode = -signal.SIGKILL
        return self.returncode


@dataclass
class PlacedServer:
    """One server on the cluster: what `Stack.servers` holds for the Ray backend."""

    name: str
    kind: str
    process: RemoteProcess
    url: str | None = None
    restarts: int = 0  # processes started after the first (the supervisor's doing)
    health_path: str = "/health"

    @property
    def pid(self) -> int:
        """The server's process id on its node."""
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the server's process group through its actor, then end the actor (it may be gone already)."""
        import ray

        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self.process.actor.stop.remote(0), timeout=10)
        with contextlib.suppress(ray.exceptions.RayError, ValueError):
            ray.kill(self.process.actor)

    def tail(self, lines: int = 20) -> str:
        """The server's last log lines, indented, for error messages."""
        import ray

        try:
            recent = ray.get(self.process.actor.tail.remote(lines), timeout=10) or ["(no output)"]
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            recent = ["(its Ray actor is gone)"]
        return "\n".join(f"    {line}" for line in recent)


@contextlib.contextmanager
def launch_on_ray(config: GymConfig, settings: LauncherSettings, *, registry_port: int, start_timeout: float,
                  stop_grace: float) -> Iterator[Stack]:
    """`launcher.launch` for the Ray backend: the registry here, every server placed on the cluster; always stops
    them (and leaves a Ray it started)."""
    import ray

    connected = connect(settings.address)
    stop = threading.Event()
    # Placed servers listen beyond loopback: every route but /health needs the stack token.
    auth = StackAuth(stack_token(config), required=True)
    registry = Registry(on_shutdown=stop.set, auth=auth)
    servers: dict[str, PlacedServer] = {}
    try:
        with serve_registry(registry, registry_port) as url:
            token_file = write_token(url, auth.token or "")
            supervisor: Supervisor | None = None
            try:
                servers = start_servers(config, url, start_timeout, auth.token or "")
                wait_until_healthy(servers, registry, start_timeout, error=RayLaunchError, poll_s=0.1)
                stack = Stack(config, url, servers, stop, auth, token_file)  # type: ignore[arg-type]  # same surface

                def respawn(server: PlacedServer) -> None:
                    server.process = _start_host(config, server.name, url, auth.token or "", start_timeout,
                                                 incarnation=server.restarts + 1)

                policies = {name: spec.restart for name, spec in config.servers.items()}
                supervisor = Supervisor(servers, policies, registry, respawn, stack.give_up,  # type: ignore[arg-type]
                                        start_timeout)
                supervisor.start()
                yield stack
            finally:
                if supervisor is not None:
                    supervisor.stop()  # first, so nothing is restarted while the stack stops
                stop_servers(list(servers.values()), stop_grace)
                remove_token(token_file)
    finally:
        if connected:
            ray.shutdown()


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (start a local one for None); True when this call connected."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
    return True


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"


@contextlib.contextmanager
def serve_registry(registry: Registry, port: int) -> Iterator[str]:
    """The registry on the driver's node address (reachable from every node) and on 127.0.0.1; yields the first."""
    import ray

    node = ray.util.get_node_ip_address()
    services = [RegistryService(registry, port, node)]
    try:
        services[0].start()
        if not _is_loopback(node):
            bound = int(services[0].url.rsplit(":", 1)[1])
            services.append(RegistryService(registry, bound, "127.0.0.1"))
            services[-1].start()
        yield services[0].url
    finally:
        for service in services:
            service.stop()


def start_servers(config: GymConfig, registry_url: str, timeout: float, token: str) -> dict[str, PlacedServer]:
    """Create one actor per server and start each server process; RayLaunchError when one cannot be placed."""
    import ray

    actors = {name: _new_host(config, name, registry_url, token) for name in config.servers}
    refs = {name: actor.start.remote() for name, (_, actor) in actors.items()}
    _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    if pending:
        for _, actor in actors.values():
            ray.kill(actor)
        stuck = [name for name, ref in refs.items() if ref in pending]
        raise _unplaced(stuck, {name: actors[name][0] for name in stuck}, timeout)
    started: dict[str, PlacedServer] = {}
    for name, ref in refs.items():
        info = ray.get(ref)
        actor = actors[name][1]
        started[name] = PlacedServer(name, config.servers[name].kind, RemoteProcess(actor, info["pid"], info["host"]))
    return started


def _new_host(config: GymConfig, name: str, registry_url: str, token: str,
              incarnation: int = 0) -> tuple[dict[str, Any], Any]:
    """The actor options server `name` asks for, and a new `ServerHost` actor created with them (not started)."""
    import ray

    block = config.servers[name].block()
    try:
        placement = Placement.model_validate(block)
    except ValidationError as exc:
        raise ConfigError(f"servers.{name}: {describe_validation_error(exc)}") from None
    options = placement.actor_options(name, incarnation)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return options, ray.remote(ServerHost).options(**options).remote(name, placed_block(block), registry_url, env,
                                                                     {"token": token})


def _start_host(config: GymConfig, name: str, registry_url: str, token: str, timeout: float,
                incarnation: int) -> RemoteProcess:
    """A new actor for server `name` with its process started (a restart); RayLaunchError when it cannot be placed."""
    import ray

    options, actor = _new_host(config, name, registry_url, token, incarnation)
    try:
        info = ray.get(actor.start.remote(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.kill(actor)
        raise _unplaced([name], {name: options}, timeout) from None
    return RemoteProcess(actor, info["pid"], info["host"])


def _unplaced(names: list[str], asked: dict[str, dict[str, Any]], timeout: float) -> RayLaunchError:
    import ray

    asks = "; ".join(f"{name}: {asked[name]}" for name in names)
    return RayLaunchError(f"Ray could not place {', '.join(names)} within {timeout:.0f}s (asked {asks}; the "
                          f"cluster has free {ray.available_resources()}); lower num_cpus/num_gpus or fix node_labels")


def stop_servers(servers: list[PlacedServer], grace: float) -> None:
    """Stop every server process (in parallel), then kill the actors."""
    import ray

    refs = []
    for server in servers:
        with contextlib.suppress(ray.exceptions.RayActorError):
            refs.append(server.process.actor.stop.remote(grace))
    with contextlib.suppress(ray.exceptions.RayError):
        ray.wait(refs, num_returns=len(refs), timeout=grace + 10)
    for server in servers:
        with contextlib.suppress(ray.exceptions.RayError, ValueError):
            ray.kill(server.process.actor)
