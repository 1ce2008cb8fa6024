"""Which agent each row goes to: its `agent_ref.name` (NeMo Gym's field), else the default agent.

An agent is named as in the config (looked up in the registry, once per name) or given by URL
(`http://host:port`), so any NeMo-Gym-compatible agent can be driven. A row's `agent_ref` is kept as it is; a
row without one gets the default agent's. Results, failures and metrics are counted per agent name.
"""

from __future__ import annotations

from typing import Any

import httpx

from gym_core.client import ServerError, ServerNotRegistered, get_client, parse_json

AGENT_TYPE = "responses_api_agents"


class UnknownAgent(LookupError):
    """A row names an agent that is neither registered nor given by URL."""


def agent_ref(name: str) -> dict[str, str]:
    """NeMo Gym's reference to an agent instance."""
    return {"type": AGENT_TYPE, "name": name}


def is_url(value: str) -> bool:
    """Whether an agent is given by URL rather than by name."""
    return value.startswith(("http://", "https://"))


def name_of(row: dict[str, Any], default: str) -> str:
    """The agent a row asks for: `agent_ref.name`, else `default`."""
    ref = row.get("agent_ref")
    name = ref.get("name") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and name else default


class AgentRoutes:
    """Agent name -> base URL; names are resolved once (given URLs first, then the registry)."""

    def __init__(self, default: str, urls: dict[str, str] | None = None, default_name: str | None = None) -> None:
        self.default = default
        self.default_name = default_name or default
        self._urls = {name: url.rstrip("/") for name, url in (urls or {}).items()}
        self._registered: set[str] = set()  # names resolved through the registry
        if is_url(default):
            self._urls.setdefault(self.default_name, default.rstrip("/"))

    @property
    def known(self) -> dict[str, str]:
        """Every name resolved so far, with its URL (what a Ray worker needs, since it has no registry)."""
        return dict(self._urls)

    async def name_default_agent(self) -> None:
        """For an agent given by URL without a name: use the name its `GET /health` reports, else the URL."""
        if self.default_name != self.default or not is_url(self.default):
            return
        try:
            health = parse_json(await get_client().get(self.default, "/health", timeout=10.0), self.default)
        except (httpx.HTTPError, ServerError):
            return  # not ours or not answering: the URL stays the name, and /run will tell what is wrong
        name = health.get("name") if isinstance(health, dict) else None
        if isinstance(name, str) and name and health.get("kind", "agent") == "agent":
            self._urls.setdefault(name, self._urls[self.default_name])
            self.default_name = name

    async def url(self, name: str) -> str:
        """The base URL of agent `name`; UnknownAgent when it is neither given nor registered."""
        known = self._urls.get(name)
        if known is not None:
            return known
        if is_url(name):
            self._urls[name] = name.rstrip("/")
            return self._urls[name]
        try:
            url = await get_client().url_of(name)
        except (ServerNotRegistered, httpx.HTTPError) as exc:
            raise UnknownAgent(f"agent {name!r} (a row's agent_ref.name, or --agent): {exc}; start that agent, fix "
                               "the row's agent_ref, or pass --agent-url NAME=URL") from None
        self._urls[name] = url
        self._registered.add(name)
        return url

    async def target(self, name: str) -> str:
        """What to POST to for agent `name`: its name when the registry resolved it (the client then looks it up
        again after a restart moved it), else its URL; UnknownAgent as `url`."""
        url = await self.url(name)
        return name if name in self._registered else url
