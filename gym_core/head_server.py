"""NeMo Gym's head-server view of a stack, served by our registry, so clients written against NeMo Gym find it.

- `GET /global_config_dict_yaml`: the YAML text of a NeMo Gym global config, JSON-encoded as a string (what
  NeMo Gym's head server answers and `ServerClient.load_from_global_config` reads). Each registered server is
  an instance `{name: {<server type>: {name: {host, port, url, pid, kind}}}}`, agents under
  `responses_api_agents`, policies under `responses_api_models`, resources under `resources_servers`; the
  registry itself is `head_server: {host, port}`.
- `GET /server_instances`: one `ServerInstanceDisplayConfig`-shaped dict per server (`gym status` in NeMo Gym).

Both are read-only views of the registry. Anything that looks like a secret (a key named like a token, key or
password, credentials in a URL) is redacted before it leaves the process.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import Response

if TYPE_CHECKING:
    from gym_core.registry import Registry

# Our server kinds -> NeMo Gym's server-type keys.
SERVER_TYPES: dict[str, str] = {
    "agent": "responses_api_agents",
    "policy": "responses_api_models",
    "resources": "resources_servers",
}
HEAD_SERVER_KEY = "head_server"
REDACTED = "****"
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|authorization|cookie|credential)", re.I)


def add_head_routes(app: FastAPI, registry: Registry) -> None:
    """Register `GET /global_config_dict_yaml` and `GET /server_instances` on the registry's app."""

    @app.get("/global_config_dict_yaml")
    async def global_config_dict_yaml(request: Request) -> Response:
        """The stack as NeMo Gym's global config, YAML inside a JSON string."""
        host, port = _bound_address(request)
        text = yaml.safe_dump(global_config(registry.all(), host, port), sort_keys=False)
        return Response(orjson.dumps(text), media_type="application/json")

    @app.get("/server_instances")
    async def server_instances() -> Response:
        """One NeMo Gym `ServerInstanceDisplayConfig` per registered server."""
        return Response(orjson.dumps(instances(registry.all())), media_type="application/json")


def global_config(servers: list[Any], head_host: str, head_port: int) -> dict[str, Any]:
    """The NeMo Gym global config dict of these registered servers (secrets redacted)."""
    config: dict[str, Any] = {HEAD_SERVER_KEY: {"host": head_host, "port": head_port}}
    for server in servers:
        host, port, url = _address(server.url)
        block = {"host": host, "port": port, "url": url, "pid": server.pid, "kind": server.kind}
        config[server.name] = {SERVER_TYPES.get(server.kind, server.kind): {server.name: block}}
    return redact(config)


def instances(servers: list[Any]) -> list[dict[str, Any]]:
    """NeMo Gym's `/server_instances` rows for these registered servers (secrets redacted)."""
    rows = []
    for server in servers:
        host, port, url = _address(server.url)
        rows.append({"process_name": server.name, "config_path": server.name, "name": server.name,
                     "server_type": SERVER_TYPES.get(server.kind, server.kind), "host": host, "port": port,
                     "url": url, "pid": server.pid})
    return redact(rows)


def redact(value: Any) -> Any:
    """A copy with secret-named keys masked and credentials removed from URLs, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) and v is not None else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return _without_credentials(value)
    return value


def _address(url: str) -> tuple[str | None, int | None, str]:
    """Host, port and the credential-free URL of a server's base URL."""
    parts = urlsplit(url)
    return parts.hostname, parts.port, _without_credentials(url)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _bound_address(request: Request) -> tuple[str, int]:
    """The address the registry is listening on (what NeMo Gym's `head_server` block holds)."""
    server = request.scope.get("server") or (request.url.hostname, request.url.port)
    return str(server[0]), int(server[1])
