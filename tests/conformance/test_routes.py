"""Every route's output, for each policy engine, validates against the official `openai` SDK's types.

For each engine (scripted; native on builtin:tiny; openai in front of benchmarks/stub_upstream.py, a separate
process answering as vLLM would) a stack of real servers runs in the test's event loop: the policy, the
weather environment and the tool-calling agent. The walk checks the policy's chat completions (with and without
tools), Responses, legacy completions and model list, its stream chunks where the engine streams, the agent's
`/run` and `/v1/responses`, and the environment's `/verify`, on every weather task row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from environments.weather.app import Weather
from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest
from servers.agents.tool_calling import ToolCallingAgent
from servers.policy.server import PolicyServer
from tests.conformance import sdk

ROOT = Path(__file__).resolve().parents[2]
ROWS = [json.loads(line) for line in (ROOT / "environments/weather/data/example.jsonl").read_text().splitlines()]
sys.path.insert(0, str(ROOT / "benchmarks"))
from stub_upstream import start_stub


@pytest.fixture(scope="module")
def stub_url():
    with start_stub(tool_calls=1) as (_, base_url):
        yield base_url


def policy_config(engine: str, stub_url: str) -> dict[str, Any]:
    if engine == "native":
        pytest.importorskip("torch")
        return {"engine": "native", "model": "builtin:tiny", "threads": 1, "max_tokens": 24}
    if engine == "openai":
        return {"engine": "openai", "base_url": stub_url, "model": "stub"}
    return {"engine": engine}


@pytest.fixture(params=["scripted", "native", "openai"])
async def stack(request, serve, stub_url) -> dict[str, Any]:
    """URLs of a policy (the parameter's engine), the weather environment and an agent using both."""
    policy = PolicyServer("policy", policy_config(request.param, stub_url))
    urls = {"engine": request.param, "policy_server": policy,
            "policy": await serve(policy.build_app()), "weather": await serve(Weather("weather", {}).build_app())}
    agent = ToolCallingAgent("agent", {"policy": urls["policy"], "resources": urls["weather"], "max_steps": 3})
    urls["agent"] = await serve(agent.build_app())
    return urls


async def post(url: str, path: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    reply = await get_client().post(url, path, body, **kwargs)
    assert reply.status_code == 200, f"{path}: {reply.status_code} {reply.text[:500]}"
    return reply.json()


def chat_body(row: dict[str, Any], tools: bool) -> dict[str, Any]:
    params = row["responses_create_params"]
    body: dict[str, Any] = {"messages": params["input"], "max_tokens": 24}
    if tools:
        body["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                         for t in params["tools"]]
    return body


async def test_policy_routes_conform(stack) -> None:
    policy = stack["policy"]
    for row in ROWS:
        for tools in (False, True):
            sdk.check_chat_completion(await post(policy, "/v1/chat/completions", chat_body(row, tools)))
        sdk.check_response(await post(policy, "/v1/responses", {**row["responses_create_params"],
                                                                 "max_output_tokens": 24}))
    sdk.check_models((await get_client().get(policy, "/v1/models")).json())
    completion = await get_client().post(policy, "/v1/completions", {"prompt": "The weather is", "max_tokens": 8})
    if stack["engine"] == "scripted":
        assert completion.status_code == 501  # no tokenizer: a clear refusal, not a malformed answer
    else:
        sdk.check_completion(completion.json())


async def test_stream_chunks_conform(stack) -> None:
    engine = stack["policy_server"].engine
    if stack["engine"] != "openai":
        pytest.skip(f"the {stack['engine']} engine's streaming is checked where it is built")
    for row in ROWS[:3]:
        for tools in (False, True):
            request = ChatCompletionRequest.model_validate(chat_body(row, tools))
            chunks = [chunk async for chunk in engine.chat_stream(request)]
            for chunk in chunks:
                sdk.check_chunk(chunk)
            assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_agent_and_verify_outputs_conform(stack) -> None:
    agent, weather = stack["agent"], stack["weather"]
    for row in ROWS:
        result = await post(agent, "/run", row)
        sdk.check_verify_response(result)
        assert result["response"]["output"], "an episode produced no output"
        sdk.check_response(await post(agent, "/v1/responses", row["responses_create_params"]))
        seeded = await get_client().post(weather, "/seed_session", row)
        session = {"X-Session-Id": seeded.headers["x-session-id"]}
        sdk.check_verify_response(await post(weather, "/verify", {**row, "response": result["response"]},
                                             headers=session))
