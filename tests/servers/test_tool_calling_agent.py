"""The tool-calling agent against real (in-process) policy and weather servers, with scripted and fake engines."""

from __future__ import annotations

import asyncio
import json
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi import Response as HTTPResponse

from environments.weather.app import Weather
from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest, ChatCompletionResponse
from servers.agents.tool_calling import ToolCallingAgent, _set_cookie
from servers.policy.engines.base import Engine, EngineConfig, EngineError
from servers.policy.server import PolicyServer

ROWS = [json.loads(line) for line in
        (Path(__file__).parents[2] / "environments/weather/data/example.jsonl").read_text().splitlines()]
TOKENS = {"prompt_token_ids": [1, 2], "generation_token_ids": [3, 4], "generation_log_probs": [-0.5, -0.25]}


class FakeEngine(Engine):
    """Replays `script(request, step)` and records every request it got."""

    def __init__(self, script, delay: float = 0.0) -> None:
        super().__init__(EngineConfig(), "fake")
        self.script, self.delay, self.requests = script, delay, []

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        message = self.script(request, len(self.requests) - 1)
        return ChatCompletionResponse.model_validate({"model": "fake", "choices": [{"message": message}]})


def tool_calls(*calls: tuple[str, str], **tokens) -> dict:
    return {"role": "assistant", "content": None, **tokens,
            "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
                           for i, (n, a) in enumerate(calls)]}


async def start_stack(serve, engine: Engine | None = None, **agent_config) -> str:
    """Policy (scripted unless `engine` is given) + weather + agent; returns the agent's URL."""
    policy = PolicyServer("policy", {"engine": "scripted"})
    if engine is not None:
        policy.engine = engine
    config = {"policy": await serve(policy.build_app()), "resources": await serve(Weather("weather", {}).build_app()),
              **agent_config}
    return await serve(ToolCallingAgent("agent", config).build_app())


async def run(agent: str, row: dict) -> tuple[int, dict]:
    reply = await get_client().post(agent, "/run", row)
    return reply.status_code, reply.json()


async def test_scripted_policy_solves_every_example_row(serve):
    agent = await start_stack(serve)
    for row in ROWS:
        status, result = await run(agent, row)
        assert status == 200 and result["reward"] == 1.0, result
        assert result["expected_condition"] == row["expected_condition"]  # env fields come back
        types = [item["type"] for item in result["response"]["output"]]
        assert types == ["function_call", "function_call_output", "message"]
        assert result["used_tool"] is True


async def test_token_fields_stay_on_the_model_items_and_go_back_to_the_policy(serve):
    def script(request, step):
        if step == 0:
            return tool_calls(("get_weather", '{"city": "Paris"}'), **TOKENS)
        return {"role": "assistant", "content": "18 and sunny", **TOKENS}

    engine = FakeEngine(script)
    status, result = await run(await start_stack(serve, engine), ROWS[0])
    assert status == 200 and result["reward"] == 1.0
    call, output, message = result["response"]["output"]
    assert call["generation_token_ids"] == [3, 4] and message["generation_log_probs"] == [-0.5, -0.25]
    assert "generation_token_ids" not in output
    assert result["response"]["usage"]["total_tokens"] == 0  # the fake reports no usage; sums stay ints
    second_prompt = engine.requests[1].messages
    assert second_prompt[-2].role == "assistant" and second_prompt[-2].generation_token_ids == [3, 4]


async def test_model_mistakes_become_error_outputs_the_model_sees(serve):
    def script(request, step):
        if step == 0:
            return tool_calls(("get_weather", "{not json"), ("fly", "{}"), ("get_weather", '{"town": "Paris"}'),
                              ("get_weather", '{"city": "Atlantis"}'), ("get_weather", "[1]"))
        return {"role": "assistant", "content": "sorry"}

    engine = FakeEngine(script)
    status, result = await run(await start_stack(serve, engine), ROWS[0])
    assert status == 200 and result["reward"] == 0.0
    outputs = [json.loads(item["output"])["error"] for item in result["response"]["output"]
               if item["type"] == "function_call_output"]
    assert [e["type"] for e in outputs] == ["invalid_arguments", "unknown_tool", "invalid_arguments",
                                            "tool_error", "invalid_arguments"]
    assert "not valid JSON" in outputs[0]["message"] and "get_weather" in outputs[1]["message"]
    tool_messages = [m for m in engine.requests[1].messages if m.role == "tool"]
    assert len(tool_messages) == 5  # the model saw every error


async def test_episode_stops_after_max_steps(serve):
    engine = FakeEngine(lambda request, step: tool_calls(("get_weather", '{"city": "Paris"}')))
    status, result = await run(await start_stack(serve, engine, max_steps=3), ROWS[0])
    assert status == 200 and len(engine.requests) == 3
    assert [i["type"] for i in result["response"]["output"]].count("function_call_output") == 3
    assert result["reward"] == 0.0  # it never answered


async def test_policy_failure_is_an_error_status_not_a_reward(serve):
    def script(request, step):
        raise EngineError("the GPU caught fire", 503, "engine_error")

    status, body = await run(await start_stack(serve, FakeEngine(script)), ROWS[0])
    assert status == 502 and "reward" not in body
    assert body["error"]["type"] == "policy_error" and "the GPU caught fire" in body["error"]["message"]


async def test_servers_that_are_down_are_an_error_status(serve):
    weather = await serve(Weather("weather", {}).build_app())
    agent = await serve(ToolCallingAgent("agent", {"policy": "http://127.0.0.1:9", "resources": weather}).build_app())
    status, body = await run(agent, ROWS[0])
    assert status == 502 and body["error"]["type"] == "policy_unreachable"
    policy = await serve(PolicyServer("policy", {"engine": "scripted"}).build_app())
    agent = await serve(ToolCallingAgent("agent", {"policy": policy, "resources": "http://127.0.0.1:9"}).build_app())
    status, body = await run(agent, ROWS[0])
    assert status == 502 and body["error"]["type"] == "resources_unreachable"


async def test_episode_deadline_is_a_504(serve):
    engine = FakeEngine(lambda request, step: {"role": "assistant", "content": "late"}, delay=1.0)
    status, body = await run(await start_stack(serve, engine, episode_timeout_s=0.2), ROWS[0])
    assert status == 504 and body["error"]["type"] == "episode_timeout"


async def test_reasoning_only_output_loops_again(serve):
    def script(request, step):
        if step == 0:
            return {"role": "assistant", "content": None, "reasoning_content": "thinking"}
        return {"role": "assistant", "content": "18, sunny"}

    engine = FakeEngine(script)
    status, result = await run(await start_stack(serve, engine), ROWS[0])
    assert status == 200 and len(engine.requests) == 2 and result["reward"] == 1.0


async def test_v1_responses_runs_an_episode_without_verify(serve):
    agent = await start_stack(serve)
    reply = await get_client().post(agent, "/v1/responses", ROWS[1]["responses_create_params"])
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "response" and "reward" not in body
    assert "12" in body["output"][-1]["content"][0]["text"]


async def test_bad_rows_are_422(serve):
    agent = await start_stack(serve)
    status, body = await run(agent, {"input": "no responses_create_params"})
    assert status == 422 and "responses_create_params" in body["error"]["message"]


async def test_aggregate_metrics_are_forwarded_to_the_resources_server(serve):
    agent = await start_stack(serve)
    reply = await get_client().post(agent, "/aggregate_metrics", {"verify_responses": [{"reward": 1.0}]})
    assert reply.json()["agent_metrics"]["mean/reward"] == 1.0


def cookie_session_env() -> FastAPI:
    """A NeMo-Gym-style resources server: it knows a rollout only by the cookie /seed_session set."""
    app, calls = FastAPI(), {}

    @app.post("/seed_session")
    async def seed(response: HTTPResponse) -> dict:
        session = f"s{len(calls)}"
        calls[session] = 0
        response.set_cookie("nemo_session", session)
        return {}

    @app.post("/get_weather")
    async def get_weather(request: Request) -> dict:
        calls[request.cookies["nemo_session"]] += 1
        return {"temperature_c": 18, "condition": "sunny"}

    @app.post("/verify")
    async def verify(request: Request) -> dict:
        return {**await request.json(), "reward": float(calls.get(request.cookies.get("nemo_session")) == 1)}

    return app


async def test_cookie_sessions_of_nemo_gym_servers_are_carried(serve):
    policy = await serve(PolicyServer("policy", {"engine": "scripted"}).build_app())
    config = {"policy": policy, "resources": await serve(cookie_session_env())}
    agent = await serve(ToolCallingAgent("agent", config).build_app())
    results = await asyncio.gather(*(run(agent, ROWS[0]) for _ in range(4)))
    assert [r for _, r in results if r.get("reward") != 1.0] == []


@pytest.mark.parametrize("bad", [0, -1])
def test_config_is_validated(bad):
    with pytest.raises(Exception, match="max_steps"):
        ToolCallingAgent("agent", {"policy": "p", "resources": "r", "max_steps": bad})


async def test_scripted_fake_token_ids_extend_the_prompt_like_a_chat_template(serve):
    policy = PolicyServer("policy", {"engine": "scripted", "token_ids": True})
    config = {"policy": await serve(policy.build_app()), "resources": await serve(Weather("weather", {}).build_app())}
    status, result = await run(await serve(ToolCallingAgent("agent", config).build_app()), ROWS[2])
    assert status == 200 and result["reward"] == 1.0
    model_items = [item for item in result["response"]["output"] if "generation_token_ids" in item]
    assert len(model_items) == 2  # one per model call
    seen: list[int] = []
    for item in model_items:  # NeMo RL's contiguity check: what was seen is a prefix of the next prompt
        assert item["prompt_token_ids"][:len(seen)] == seen
        seen = item["prompt_token_ids"] + item["generation_token_ids"]
        assert item["generation_log_probs"] == [0.0] * len(item["generation_token_ids"])
    answer = bytes(model_items[-1]["generation_token_ids"]).decode()
    assert answer == "city: Tokyo, temperature_c: 24, condition: cloudy.<|end|>"


@pytest.mark.parametrize("header", [
    "gym_session_weather=abc.Xy-_z; Path=/; HttpOnly; SameSite=lax", 'a="quoted"; Path=/', "a=b;c=d", "a=b; Foo",
    "a=b; Path", "$x=1", "Path=/; a=b", "a=b; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Max-Age=3", "x=1, y=2", "bad",
])
def test_set_cookie_reads_like_simplecookie(header: str) -> None:
    jar = SimpleCookie()
    jar.load(header)
    assert _set_cookie(header) == {name: morsel.value for name, morsel in jar.items()}
