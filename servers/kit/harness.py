"""An environment served in-process for the conformance check, and scripted attempts played against it.

The environment's app runs behind httpx's ASGI transport (its whole app: edge, sessions, routes, lifespan),
so thousands of rollouts take seconds. Servers its block references (a `judge:` policy, ...) are started from
the same config.yaml on free loopback ports, since the environment reaches them over real HTTP.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from gym_core.client import close_client
from gym_core.config import REFERENCE_KINDS
from gym_core.protocol import TaskRow, dumps, loads
from gym_core.serve import build_server
from gym_core.server import SESSION_HEADER, serve_in_background
from servers.kit.catalog import Environment, KitError
from servers.resources import Attempt, ResourcesServer

REQUEST_TIMEOUT_S = 60.0  # generous: the machine running the check may be busy


class CheckFailure(Exception):
    """The environment answered in a way the check cannot accept (a crash, a missing reward)."""


def as_attempt(value: Attempt | str) -> Attempt:
    """An Attempt from what `known_attempts` returned (a plain string is the final answer)."""
    if isinstance(value, str):
        return Attempt(answer=value)
    if not isinstance(value, Attempt):
        raise KitError(f"known_attempts must return Attempt objects or answer strings, got {type(value).__name__}")
    return value


def assistant_message(text: str) -> dict[str, Any]:
    """An assistant output message item, as a policy server writes it."""
    return {"type": "message", "role": "assistant", "id": f"msg_{uuid.uuid4().hex[:12]}", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


class Harness:
    """One environment server and an HTTP client to it; plays attempts in sessions of their own."""

    def __init__(self, server: ResourcesServer, client: httpx.AsyncClient) -> None:
        self.server = server
        self.client = client

    async def post(self, path: str, body: Any, session: str | None, raw: bytes | None = None) -> httpx.Response:
        """POST JSON (or raw bytes) in a session (None: a new one); a 5xx answer is a CheckFailure."""
        content = raw if raw is not None else dumps(body)
        headers = {"content-type": "application/json"}
        if session is not None:
            headers[SESSION_HEADER] = session
        reply = await self.client.post(path, content=content, headers=headers)
        if reply.status_code >= 500:
            raise CheckFailure(f"POST {path} answered {reply.status_code}: {_brief(reply)}")
        return reply

    async def seed(self, row: dict[str, Any]) -> str:
        """Open a session for a row; returns the session token the server issued (sent back on later calls)."""
        reply = await self.post("/seed_session", row, None)
        if reply.status_code != 200:
            raise CheckFailure(f"/seed_session answered {reply.status_code}: {_brief(reply)}")
        session = reply.headers.get(SESSION_HEADER)
        if not session:
            raise CheckFailure(f"/seed_session answered without an {SESSION_HEADER} header")
        return session

    async def call(self, attempt: Attempt, step: int, session_id: str) -> dict[str, Any]:
        """Make an attempt's `step`-th tool call; returns the function_call_output item the model would see."""
        name, arguments = attempt.calls[step]
        reply = await self.post(f"/{name}", arguments, session_id)
        return {"type": "function_call_output", "call_id": f"call_{step}", "output": reply.text}

    async def verify(self, row: dict[str, Any], output: list[dict[str, Any]], session_id: str) -> dict[str, Any]:
        """/verify an episode whose output items are `output`; returns the verify body (it has a reward)."""
        reply = await self.post("/verify", {**row, "response": {"output": output}}, session_id)
        if reply.status_code != 200:
            raise CheckFailure(f"/verify answered {reply.status_code}: {_brief(reply)}")
        body = loads(reply.content)
        if not isinstance(body, dict) or "reward" not in body:
            raise CheckFailure("/verify answered without a `reward`")
        return body

    async def play(self, row: dict[str, Any], attempt: Attempt) -> dict[str, Any]:
        """A whole rollout of a scripted attempt in a fresh session: seed, its tool calls, verify."""
        session_id = await self.seed(row)
        output: list[dict[str, Any]] = []
        for step in range(len(attempt.calls)):
            output += [function_call(attempt, step), await self.call(attempt, step, session_id)]
        return await self.verify(row, output + [assistant_message(attempt.answer)], session_id)

    def attempts(self, row: dict[str, Any]) -> tuple[Attempt, Attempt]:
        """The environment's (correct, incorrect) attempts at a row."""
        correct, incorrect = self.server.known_attempts(TaskRow.model_validate(row))
        return as_attempt(correct), as_attempt(incorrect)


def function_call(attempt: Attempt, step: int) -> dict[str, Any]:
    """The function_call item the model would have written for an attempt's `step`-th call."""
    name, arguments = attempt.calls[step]
    return {"type": "function_call", "call_id": f"call_{step}", "name": name, "arguments": dumps(arguments).decode()}


@contextlib.asynccontextmanager
async def harness(env: Environment, server_class: type[ResourcesServer] | None = None,
                  **settings: Any) -> AsyncIterator[Harness]:
    """Serve the environment (optionally another class, extra settings) in-process; always stops everything."""
    async with contextlib.AsyncExitStack() as stack:
        block = {**env.block, **settings}
        for key in REFERENCE_KINDS:
            if isinstance(block.get(key), str) and not block[key].startswith(("http://", "https://")):
                block[key] = await stack.enter_async_context(_referenced_server(env, block[key]))
        server = (server_class or env.server_class)(env.name, block)
        app = server.build_app()
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        # No cookie jar: every request names its session in the header (or none, to be issued a new one).
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        client = await stack.enter_async_context(httpx.AsyncClient(
            transport=transport, base_url="http://env", timeout=REQUEST_TIMEOUT_S, cookies=no_cookies))
        stack.push_async_callback(close_client)  # the env's own calls (a judge) went through the shared client
        yield Harness(server, client)


@contextlib.asynccontextmanager
async def _referenced_server(env: Environment, name: str) -> AsyncIterator[str]:
    """Start a server the environment's block names, from its config.yaml; yields its URL."""
    block = env.servers.get(name)
    if block is None:
        raise KitError(f"{env.folder / 'config.yaml'}: the environment refers to server '{name}', which that file "
                       "does not define; define it there (e.g. a scripted policy) so the check can start it")
    server = build_server(name, block)
    async with serve_in_background(server.build_app(), startup_timeout=120.0) as url:
        yield url


def _brief(reply: httpx.Response) -> str:
    return " ".join(reply.text[:300].split())
