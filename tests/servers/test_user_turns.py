"""The agent side of user turns: environments that add them, ones that do not, and token fidelity across them."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from openai.types.responses import EasyInputMessageParam, ResponseOutputItem
from pydantic import TypeAdapter

from environments.multi_turn.app import NUDGE, MultiTurn
from environments.weather.app import Weather
from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest, ChatCompletionResponse
from rollout.trajectory import to_trajectory
from servers.agents.tool_calling import ToolCallingAgent
from servers.policy.engines.base import Engine, EngineConfig
from servers.policy.server import PolicyServer

ROOT = Path(__file__).parents[2]
MULTI_TURN_ROW = json.loads((ROOT / "environments/multi_turn/data/example.jsonl").read_text().splitlines()[0])
WEATHER_ROW = json.loads((ROOT / "environments/weather/data/example.jsonl").read_text().splitlines()[0])


class BooksWhenNudged(Engine):
    """Test double: answers "Noted." to every user message, and books `room` once the user nudges."""

    def __init__(self, room: str) -> None:
        super().__init__(EngineConfig(), "double")
        self.room, self.user_messages = room, []

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        last = request.messages[-1]
        if last.role == "user":
            self.user_messages.append(last.content)
        if last.role == "user" and last.content == NUDGE:
            call = {"id": "c1", "type": "function", "function": {"name": "book_room",
                                                                  "arguments": json.dumps({"room_id": self.room})}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": "Booked." if last.role == "tool" else "Noted."}
        return ChatCompletionResponse.model_validate({"model": "double", "choices": [{"message": message}]})


async def stack(serve, resources_app, engine: Engine | None = None, **agent) -> str:
    policy = PolicyServer("policy", {"engine": "scripted", "token_ids": True})
    if engine is not None:
        policy.engine = engine
    config = {"policy": await serve(policy.build_app()), "resources": await serve(resources_app), **agent}
    return await serve(ToolCallingAgent("agent", config).build_app())


async def test_the_user_speaks_until_done_and_the_outcome_is_rewarded(serve) -> None:
    engine = BooksWhenNudged("R301")
    agent = await stack(serve, MultiTurn("multi_turn", {}).build_app(), engine, max_steps=16)
    result = (await get_client().post(agent, "/run", MULTI_TURN_ROW)).json()
    said = [(i["role"], i["content"]) for i in result["response"]["output"] if i["type"] == "message"]
    follow_ups = MULTI_TURN_ROW["follow_ups"]
    assert engine.user_messages == [MULTI_TURN_ROW["responses_create_params"]["input"][1]["content"], *follow_ups,
                                    NUDGE]
    assert [role for role, _ in said] == ["assistant", *["user", "assistant"] * (len(follow_ups) + 1)]
    assert [content for role, content in said if role == "user"] == [*follow_ups, NUDGE]
    assert result["reward"] == 1.0 and result["booked"] == "R301" and result["user_turns"] == len(follow_ups)


async def test_an_episode_with_user_turns_is_sdk_output_items_and_user_messages(serve) -> None:
    # NeMo Gym's response output union takes input messages too; the SDK's Response has no user messages in its
    # output, so a multi-turn episode is checked item by item.
    agent = await stack(serve, MultiTurn("multi_turn", {}).build_app(), BooksWhenNudged("R301"), max_steps=16)
    output = (await get_client().post(agent, "/run", MULTI_TURN_ROW)).json()["response"]["output"]
    user_turns = [item for item in output if item.get("role") == "user"]
    assert len(user_turns) == len(MULTI_TURN_ROW["follow_ups"]) + 1
    for item in user_turns:
        TypeAdapter(EasyInputMessageParam).validate_python(item)
    for item in output:
        if item.get("role") != "user":
            TypeAdapter(ResponseOutputItem).validate_python(item)


async def test_max_user_turns_and_max_steps_bound_the_conversation(serve) -> None:
    agent = await stack(serve, MultiTurn("multi_turn", {}).build_app(), BooksWhenNudged("R301"), max_user_turns=1)
    result = (await get_client().post(agent, "/run", MULTI_TURN_ROW)).json()
    assert [i["role"] for i in result["response"]["output"]] == ["assistant", "user", "assistant"]
    assert result["reward"] == 0.0  # never booked
    agent = await stack(serve, MultiTurn("multi_turn", {}).build_app(), BooksWhenNudged("R301"), max_steps=2)
    result = (await get_client().post(agent, "/run", MULTI_TURN_ROW)).json()
    assert result["response"]["output"][-1]["role"] == "assistant"  # never ends on an unanswered user turn


async def test_user_turns_are_environment_tokens_in_a_token_exact_trajectory(serve) -> None:
    """The scripted policy with token ids: each later prompt extends the earlier one through the user turns."""
    agent = await stack(serve, MultiTurn("multi_turn", {}).build_app(), max_steps=16)
    result = (await get_client().post(agent, "/run", MULTI_TURN_ROW)).json()
    trajectory = to_trajectory(result)  # raises if any prompt does not extend the previous prompt + generation
    text = bytes(trajectory.completion_ids).decode()
    masked = bytes(t for t, m in zip(trajectory.completion_ids, trajectory.completion_mask, strict=True) if m == 0)
    for follow_up in MULTI_TURN_ROW["follow_ups"]:
        assert f"<|user|>{follow_up}<|end|>" in text and follow_up.encode() in masked
    assert trajectory.num_calls >= 2 * len(MULTI_TURN_ROW["follow_ups"])


class CountingWeather(Weather):
    """Weather (no user turns), counting the requests that reach its unknown-route handler."""

    unknown_calls = 0

    async def _unknown_tool_route(self, name: str) -> JSONResponse:
        CountingWeather.unknown_calls += 1
        return await super()._unknown_tool_route(name)


async def test_an_environment_without_user_turns_is_asked_once_per_agent(serve) -> None:
    agent_server = ToolCallingAgent("agent", {
        "policy": await serve(PolicyServer("policy", {"engine": "scripted"}).build_app()),
        "resources": await serve(CountingWeather("weather", {}).build_app())})
    agent = await serve(agent_server.build_app())
    for _ in range(3):
        result = (await get_client().post(agent, "/run", WEATHER_ROW)).json()
        assert result["reward"] == 1.0 and [i["type"] for i in result["response"]["output"]][-1] == "message"
    assert CountingWeather.unknown_calls == 1 and len(agent_server.user_turns.without_route) == 1


async def test_a_malformed_user_turn_is_an_infrastructure_error(serve) -> None:
    class Garbled(MultiTurn):
        def add_routes(self, app) -> None:
            super().add_routes(app)
            app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/user_turn"]

            @app.post("/user_turn")
            async def user_turn(request: Request) -> JSONResponse:
                return JSONResponse({"message": {"role": "assistant", "content": "I am the user now"}})

    agent = await stack(serve, Garbled("multi_turn", {}).build_app(), BooksWhenNudged("R301"))
    reply = await get_client().post(agent, "/run", MULTI_TURN_ROW)
    assert reply.status_code == 502 and "only the user speaks" in reply.json()["error"]["message"]


def test_a_user_turn_needs_a_live_session_this_server_issued() -> None:
    episode = {"output": [{"type": "message", "role": "assistant", "id": "m1", "status": "completed",
                           "content": [{"type": "output_text", "text": "Which floor?", "annotations": []}]}]}
    with TestClient(MultiTurn("multi_turn", {}).build_app()) as client:  # its cookie jar carries the session
        assert client.post("/user_turn", json=episode, headers={"X-Session-Id": "made-up"}).status_code == 403
        client.post("/seed_session", json=MULTI_TURN_ROW)
        assert client.post("/user_turn", json=episode).json()["message"]["content"] == MULTI_TURN_ROW["follow_ups"][0]
        client.post("/verify", json={**MULTI_TURN_ROW, "response": episode})
        assert client.post("/user_turn", json=episode).status_code == 410  # /verify ended it
