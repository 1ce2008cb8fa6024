"""Resources servers with a simulated user: after each model answer, the user may speak again.

    class Booking(SimulatedUserServer):
        async def user_turn(self, session: Session, output: list[OutputItem]) -> str | None:
            script = session.state["follow_ups"]
            return script.pop(0) if script else None   # None: the user has nothing more to say

The agent calls `POST /user_turn` with the episode so far whenever the model answers without a tool call
(servers/agents/user_turns.py); the reply `{"message": {"role": "user", "content": ...}}` becomes the next
user message, `{"message": null}` ends the episode. Agents that do not know the route (NeMo Gym's) simply end
the episode on the model's first answer.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from gym_core.protocol import Message, OutputItem, UserTurnRequest, UserTurnResponse, dumps, loads
from gym_core.server import describe_validation_error, error_response
from servers.resources import ResourcesServer, Session

USER_TURN_ROUTE = "/user_turn"


class SimulatedUserServer(ResourcesServer):
    """A ResourcesServer plus `POST /user_turn`, answered by the `user_turn` hook."""

    async def user_turn(self, session: Session, output: list[OutputItem]) -> str | None:
        """Hook: the user's next message after the model's answer in `output`, or None when the user is done."""
        return None

    def add_routes(self, app: FastAPI) -> None:
        """The base routes plus POST /user_turn."""
        if USER_TURN_ROUTE.lstrip("/") in self.tools:
            raise TypeError(f"{type(self).__name__}: a tool may not be called {USER_TURN_ROUTE.lstrip('/')!r}")
        super().add_routes(app)
        app.add_api_route(USER_TURN_ROUTE, self._user_turn_route, methods=["POST"])

    async def _user_turn_route(self, request: Request) -> Response:
        try:
            episode = UserTurnRequest.model_validate(loads(await request.body()))
        except (ValidationError, ValueError) as err:
            detail = describe_validation_error(err) if isinstance(err, ValidationError) else f"not JSON ({err})"
            return error_response(422, f'{USER_TURN_ROUTE} expects {{"output": [...the episode so far...]}}: {detail}')
        text = await self.user_turn(self.session_for(request), episode.output)  # 410 once the session ended
        message = None if text is None else Message(role="user", content=text)
        return Response(dumps(UserTurnResponse(message=message)), media_type="application/json")
