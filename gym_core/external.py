"""`kind: external`: any command as a server of the stack, such as a NeMo Gym resources server, unchanged.

```yaml
servers:
  nemo_weather:
    kind: external
    serves: resources               # registered as this kind, so an agent's `resources:` can name it
    command: python app.py          # a list, or a string split as a shell would; {port} and {host} are filled in
    cwd: /path/to/Gym/resources_servers/example_simple_weather
    nemo_gym:                       # hand it its config the way NeMo Gym's launcher does
      implementation: example_simple_weather
      config: {entrypoint: app.py, domain: agent}
    health_path: /health            # answers 200 once it is up
    start_timeout_s: 300
```

The launcher picks a free port (or takes `port:`), hands it over through `{port}` in the command, the
environment variable `port_env`, and/or NeMo Gym's `NEMO_GYM_CONFIG_DICT` (the YAML of a global config with
this server's block and the head server, which is our registry) plus `NEMO_GYM_CONFIG_PATH` (the instance name).
The command runs in its own process group with its output captured like every server's; once `health_path`
answers 200 within `start_timeout_s`, its URL is registered on its behalf. A command that never gets healthy is
stopped, and the launch fails with its last log lines.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gym_core.config import ConfigError, GymConfig
from gym_core.registry import Registry, ServerInfo

if TYPE_CHECKING:  # the launcher imports this module; its types are only needed for annotations here
    from gym_core.launcher import ServerProcess, StackEnv

NEMO_GYM_CONFIG_DICT_ENV = "NEMO_GYM_CONFIG_DICT"
NEMO_GYM_CONFIG_PATH_ENV = "NEMO_GYM_CONFIG_PATH"
_NEMO_GYM_SERVER_TYPES = {"resources": "resources_servers", "policy": "responses_api_models",
                          "agent": "responses_api_agents"}


class NemoGymHandover(BaseModel):
    """How a NeMo Gym server gets its config: its implementation folder name and block, plus global keys."""

    model_config = ConfigDict(extra="forbid")

    implementation: str  # the folder under resources_servers/ (or responses_api_models/, ...)
    server_type: str | None = None  # default: from `serves` (resources -> resources_servers, ...)
    config: dict[str, Any] = Field(default_factory=dict)  # the implementation's block (entrypoint, domain, ...)
    global_config: dict[str, Any] = Field(default_factory=dict)  # extra top-level keys of the global config


class ExternalSpec(BaseModel):
    """The block of a `kind: external` server."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["external"] = "external"
    command: str | list[str]
    serves: Literal["resources", "policy", "agent", "other"] = "other"
    cwd: str | None = None
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)  # a fixed port; default: a free one
    port_env: str | None = None  # environment variable the port is handed over in
    env_vars: dict[str, str] = Field(default_factory=dict)
    health_path: str = "/health"
    start_timeout_s: float = Field(60.0, gt=0)
    nemo_gym: NemoGymHandover | None = None

    @model_validator(mode="after")
    def _port_is_handed_over(self) -> ExternalSpec:
        if not self.argv():
            raise ValueError("command is empty")
        if not self.health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {self.health_path!r}")
        told = "{port}" in " ".join(self.argv()) or self.port_env or self.nemo_gym or self.port is not None
        if not told:
            raise ValueError("the command cannot learn its port: put {port} in the command, set port_env, "
                             "use nemo_gym:, or give a fixed port:")
        return self

    def argv(self) -> list[str]:
        """The command as an argument list (placeholders still in)."""
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


def start_timeout(blocks: list[dict[str, Any]]) -> float:
    """The longest `start_timeout_s` among external server blocks (0 when there are none)."""
    return max((ExternalSpec.model_validate(b).start_timeout_s for b in blocks if b.get("kind") == "external"),
               default=0.0)


def refuse_on_ray(config: GymConfig) -> None:
    """ConfigError when a config for the Ray backend has external servers: they run on the local backend only."""
    names = [name for name, spec in config.servers.items() if spec.kind == "external"]
    if names:
        raise ConfigError(f"servers {', '.join(names)}: kind: external runs on the local backend only; "
                          "launch this config without --ray (or `launcher: {backend: ray}`)")


def spawn(name: str, block: dict[str, Any], registry: Registry, stack: StackEnv, echo: bool,
          width: int) -> ServerProcess:
    """Start an external server's command; a thread registers it once healthy (or stops it on timeout)."""
    from gym_core.launcher import ServerProcess, _read_log  # the launcher imports us: import it when used

    spec = ExternalSpec.model_validate(block)
    port = spec.port or free_port(spec.host)
    url = f"http://{spec.host}:{port}"
    argv = [part.replace("{port}", str(port)).replace("{host}", spec.host) for part in spec.argv()]
    # The stack's environment without its secrets; the command gets no token (it is registered on its behalf).
    env = {**stack.environ, **spec.env_vars, "PYTHONUNBUFFERED": "1"}
    if spec.port_env:
        env[spec.port_env] = str(port)
    if spec.nemo_gym is not None:
        env.update(nemo_gym_env(name, spec, port, stack.registry_url))
        if spec.cwd:  # NeMo Gym runs a server from its folder with that folder on the path
            env["PYTHONPATH"] = os.pathsep.join(p for p in (spec.cwd, env.get("PYTHONPATH")) if p)
    try:
        process = subprocess.Popen(argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        message = f"server '{name}': cannot run {argv[0]!r} ({exc.strerror}); check `command:` and `cwd:`"
        raise OSError(message) from None
    server = ServerProcess(name, "external", process, health_path=spec.health_path)
    prefix = f"{name:<{width}} | " if echo else None
    server.reader = threading.Thread(target=_read_log, args=(process.stdout, server.log, prefix),
                                     name=f"log-{name}", daemon=True)
    server.reader.start()
    threading.Thread(target=_register_when_healthy, args=(server, url, spec, registry),
                     name=f"register-{name}", daemon=True).start()
    return server


def nemo_gym_env(name: str, spec: ExternalSpec, port: int, registry_url: str) -> dict[str, str]:
    """NEMO_GYM_CONFIG_DICT and NEMO_GYM_CONFIG_PATH for a NeMo Gym server, as its own launcher sets them."""
    assert spec.nemo_gym is not None
    handover = spec.nemo_gym
    server_type = handover.server_type or _NEMO_GYM_SERVER_TYPES.get(spec.serves, "resources_servers")
    registry = httpx.URL(registry_url)
    block = {**handover.config, "host": spec.host, "port": port}
    global_config = {
        "head_server": {"host": registry.host, "port": registry.port},
        "dry_run": False,
        **handover.global_config,
        name: {server_type: {handover.implementation: block}},
    }
    return {NEMO_GYM_CONFIG_DICT_ENV: yaml.safe_dump(global_config, sort_keys=False), NEMO_GYM_CONFIG_PATH_ENV: name}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now; the external command binds it itself a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _register_when_healthy(server: ServerProcess, url: str, spec: ExternalSpec, registry: Registry) -> None:
    """Poll the health path; register the server once it answers 200; stop it if it never does."""
    deadline = time.monotonic() + spec.start_timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while server.process.poll() is None:
            try:
                if http.get(f"{url}{spec.health_path}").status_code == 200:
                    registry.register(ServerInfo(name=server.name, kind=spec.serves, url=url, pid=server.pid))
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                server.log.append(f"[gym] no 200 from GET {spec.health_path} within start_timeout_s="
                                  f"{spec.start_timeout_s:g} s; stopping it")
                _stop_group(server.pid)
                return
            time.sleep(0.1)


def _stop_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
