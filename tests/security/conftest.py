"""Servers of every kind, served in this process on free loopback ports, for the edge and session suites."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gym_core.auth import StackAuth
from gym_core.registry import Registry
from gym_core.server import GymServer, serve_in_background

SMALL_BODY_LIMIT = 64 * 1024
BODY_TIMEOUT_S = 2.0  # short, so the "body never arrives" probe is quick


def weather(**config: object) -> GymServer:
    from environments.weather.app import Weather

    return Weather("weather", {"max_request_bytes": SMALL_BODY_LIMIT, "body_timeout_s": BODY_TIMEOUT_S, **config})


def policy(**config: object) -> GymServer:
    from servers.policy.server import PolicyServer

    return PolicyServer("policy", {"engine": "scripted", "max_request_bytes": SMALL_BODY_LIMIT, "body_timeout_s": BODY_TIMEOUT_S, **config})


def agent(**config: object) -> GymServer:
    from servers.agents.tool_calling import ToolCallingAgent

    return ToolCallingAgent("agent", {"policy": "policy", "resources": "weather",
                                      "max_request_bytes": SMALL_BODY_LIMIT, "body_timeout_s": BODY_TIMEOUT_S,
                                      **config})


# (kind, a POST route that reads a JSON body, how to build the app)
KINDS: dict[str, tuple[str, Callable[[], object]]] = {
    "resources": ("/get_weather", lambda: weather().build_app()),
    "policy": ("/v1/chat/completions", lambda: policy().build_app()),
    "agent": ("/run", lambda: agent().build_app()),
    "registry": ("/register", lambda: Registry(auth=StackAuth("t0ken")).build_app(BODY_TIMEOUT_S)),
}
REGISTRY_HEADERS = {"authorization": "Bearer t0ken"}


@pytest.fixture(params=list(KINDS))
async def edge_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str, str, dict[str, str]]]:
    """(kind, base URL, a JSON POST route, headers that route needs) for each server kind in turn."""
    kind = request.param
    route, build = KINDS[kind]
    headers = REGISTRY_HEADERS if kind == "registry" else {}
    async with serve_in_background(build()) as url:  # type: ignore[arg-type]
        yield kind, url, route, headers
