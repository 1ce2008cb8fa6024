"""Bad data is the row's fault: the agent answers 422 `invalid_row` naming the field, not a 502 server failure
(issue 10, finding 7), against real in-process policy and weather servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from environments.weather.app import Weather
from gym_core.client import get_client
from servers.agents.tool_calling import ToolCallingAgent
from servers.policy.engines.base import EngineError
from servers.policy.server import PolicyServer
from tests.servers.test_tool_calling_agent import FakeEngine, start_stack

ROW = json.loads((Path(__file__).parents[2] / "environments/weather/data/example.jsonl").read_text().splitlines()[0])


async def run(agent: str, row: dict) -> tuple[int, dict]:
    reply = await get_client().post(agent, "/run", row)
    return reply.status_code, reply.json()


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def with_params(**changes: object) -> dict:
    return {**ROW, "responses_create_params": {**ROW["responses_create_params"], **changes}}


BAD_TOOL = {"type": "function", "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": []}}}}


@pytest.mark.parametrize("row, named", [
    (without(ROW, "expected_condition"), "expected_condition: Field required"),
    ({**ROW, "expected_temperature_c": "warm"}, "expected_temperature_c: Input should be a valid integer"),
    ({**ROW, "expected_condition": 7}, "expected_condition: Input should be a valid string"),
    (with_params(tools=[BAD_TOOL]), "properties.city.enum must be a non-empty list"),
    (with_params(metadata={"extra_body": "[1]"}), "metadata.extra_body must be a JSON object"),
    (with_params(metadata={"extra_body": '{"messages": []}'}), "messages may not be set"),
    ({"responses_create_params": {"input": 5}}, "responses_create_params.input"),
    (with_params(tools=[None]), "responses_create_params.tools.0"),  # was a 500 (found by tests/fuzz)
])
async def test_a_bad_row_is_a_422_invalid_row_naming_the_field(serve, row, named):
    status, body = await run(await start_stack(serve), row)
    assert status == 422, body
    assert body["error"]["type"] == "invalid_row" and named in body["error"]["message"], body


async def test_a_server_failure_stays_a_502_and_later_steps_are_not_the_rows_fault(serve):
    def script(request, step):
        if step == 0:
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
        raise EngineError("the prompt is longer than the model's context", 400, "bad_request")

    status, body = await run(await start_stack(serve, FakeEngine(script)), ROW)
    assert status == 502 and body["error"]["type"] == "policy_error"  # the model made it long, not the row
    assert "longer than the model's context" in body["error"]["message"]


async def test_a_resources_bug_is_still_a_server_error(serve):
    class Broken(Weather):
        async def verify(self, row, session):
            raise KeyError("a bug in the environment")

    agent = await serve(ToolCallingAgent("agent", {
        "policy": await serve(PolicyServer("policy", {"engine": "scripted"}).build_app()),
        "resources": await serve(Broken("weather", {}).build_app())}).build_app())
    status, body = await run(agent, ROW)
    assert status == 502 and body["error"]["type"] == "resources_error"


async def test_a_session_the_server_lost_is_reported_as_such(serve):
    from gym_core.sessions import SessionRefused

    class Restarted(Weather):  # as after a restart: the rollout's session is not this process's
        async def verify(self, row, session):
            raise SessionRefused(410, "session abc has ended")

    agent = await serve(ToolCallingAgent("agent", {
        "policy": await serve(PolicyServer("policy", {"engine": "scripted"}).build_app()),
        "resources": await serve(Restarted("weather", {}).build_app())}).build_app())
    status, body = await run(agent, ROW)
    assert status == 502 and body["error"]["type"] == "resources_session_lost"  # the collector runs it again


async def test_v1_responses_with_a_session_the_resources_server_never_issued_is_the_callers_fault(serve):
    reply = await get_client().post(await start_stack(serve), "/v1/responses", ROW["responses_create_params"],
                                    headers={"X-Session-Id": "made-up"})  # was a 502 (found by tests/fuzz)
    assert reply.status_code == 410 and reply.json()["error"]["type"] == "invalid_session"
