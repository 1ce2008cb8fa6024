"""The tool deadline: a tool running past `tool_timeout_s` is cut off with an error the model sees."""

from __future__ import annotations

import asyncio

from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest, ChatCompletionResponse
from servers.agents.tool_calling import ToolCallingAgent
from servers.policy.engines.base import Engine, EngineConfig
from servers.policy.server import PolicyServer
from servers.resources import ResourcesServer, Session, VerifyRequest, tool

ROW = {"responses_create_params": {"input": "wait for it", "tools": [
    {"type": "function", "name": "slow", "parameters": {"type": "object", "properties": {}}, "strict": False}]}}


class Sleepy(ResourcesServer):
    """A tool that never finishes, and one that raises its own TimeoutError."""

    @tool
    async def slow(self, session: Session) -> dict:
        await asyncio.sleep(3600)
        return {}

    @tool
    async def own_timeout(self) -> dict:
        raise TimeoutError("the tool's own socket timed out")

    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return 1.0


class CallsSlowThenAnswers(Engine):
    """Test double: calls `slow` once, then answers with whatever the tool said."""

    def __init__(self) -> None:
        super().__init__(EngineConfig(), "double")

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        tool_said = [m.content for m in request.messages if m.role == "tool"]
        message = ({"role": "assistant", "content": f"the tool said: {tool_said[0]}"} if tool_said else
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "c0", "type": "function", "function": {"name": "slow", "arguments": "{}"}}]})
        return ChatCompletionResponse.model_validate({"model": "double", "choices": [{"message": message}]})


async def test_a_hanging_tool_is_cut_off_and_the_model_sees_why(serve) -> None:
    resources = await serve(Sleepy("sleepy", {"tool_timeout_s": 0.2}).build_app())
    reply = await get_client().post(resources, "/slow", {})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "tool_timeout"
    assert "within 0.2 s" in reply.json()["error"]["message"]

    policy = PolicyServer("policy", {"engine": "scripted"})
    policy.engine = CallsSlowThenAnswers()
    agent = await serve(ToolCallingAgent("agent", {"policy": await serve(policy.build_app()),
                                                    "resources": resources}).build_app())
    result = (await get_client().post(agent, "/run", ROW)).json()
    assert result["reward"] == 1.0
    [message] = [item for item in result["response"]["output"] if item["type"] == "message"]
    assert "did not finish within 0.2 s" in message["content"][0]["text"]


async def test_a_tools_own_timeout_error_is_a_server_bug_not_the_deadline(serve) -> None:
    resources = await serve(Sleepy("sleepy", {"tool_timeout_s": 30}).build_app())
    reply = await get_client().post(resources, "/own_timeout", {})
    assert reply.status_code == 500 and reply.json()["error"]["type"] == "internal_error"
