"""Environments that add user turns: after the model answers without a tool call, the agent asks the
resources server's `POST /user_turn` for the simulated user's next message.

The route is optional (NeMo Gym compatible): a server without it answers 404, the agent remembers that and
never asks it again, and the episode ends on the model's answer as before. A user message the server returns is
appended to the episode's output as an input message item, so the next prompt carries it as environment tokens
and the prompt still extends the previous one token for token (see servers/simulated_user.py for the server side).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import ValidationError

from gym_core.protocol import UserTurnResponse, loads

NO_ROUTE = frozenset({404, 405})

# _call(role, server, path, body, episode, ok=...) of the agent: posts within the episode's deadline.
Call = Callable[..., Awaitable[httpx.Response]]


class UserTurns:
    """Asks resources servers for user turns; remembers the servers that have no such route."""

    def __init__(self) -> None:
        self.without_route: set[str] = set()

    async def next(self, call: Call, server: str, output: list[dict[str, Any]], episode: Any) -> dict[str, Any] | None:
        """The user's next message item after the model's answer, or None when the conversation is over."""
        if server in self.without_route:
            return None
        reply = await call("resources", server, "/user_turn", {"output": output}, episode, ok=NO_ROUTE)
        if reply.status_code in NO_ROUTE:
            self.without_route.add(server)
            return None
        try:
            message = UserTurnResponse.model_validate(loads(reply.content)).message
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"resources server {server!r} /user_turn did not return "
                             f'{{"message": {{"role": "user", "content": ...}} | null}} ({exc})') from None
        if message is None:
            return None
        if message.role != "user":
            raise ValueError(f"resources server {server!r} /user_turn returned a {message.role!r} message; "
                             "only the user speaks through it")
        return {"type": "message", "role": "user", "content": message.model_dump(mode="json")["content"]}
