"""The policy server: OpenAI-compatible routes, the Responses conversion, the scripted and openai engines."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest, ChatCompletionResponse, Response, ResponseCreateParams
from servers.policy.convert import chat_to_response, responses_to_chat
from servers.policy.engines.base import create_engine
from servers.policy.server import PolicyServer

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}
TOKENS = {"prompt_token_ids": [1, 2], "generation_token_ids": [3, 4], "generation_log_probs": [-0.1, -0.2]}


@pytest.fixture
def scripted():
    with TestClient(PolicyServer("policy", {"kind": "policy", "engine": "scripted"}).build_app()) as client:
        yield client


def test_scripted_chat_calls_the_tool_then_answers_from_its_output(scripted):
    messages = [{"role": "user", "content": "What's the weather in New York today?"}]
    first = scripted.post("/v1/chat/completions", json={"messages": messages, "tools": [CHAT_TOOL]}).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    call = message["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"New York"}'}
    tool_output = {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature_c": 21, "condition": "windy"}'}
    second = scripted.post("/v1/chat/completions",
                           json={"messages": [*messages, message, tool_output], "tools": [CHAT_TOOL]}).json()
    assert second["choices"][0]["message"]["content"] == "temperature_c: 21, condition: windy."
    assert "generation_token_ids" not in second["choices"][0]["message"]  # the scripted engine has no tokens


def test_scripted_reports_tool_errors_and_answers_without_tools(scripted):
    messages = [{"role": "user", "content": "Weather in Atlantis?"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": '{"error": {"type": "tool_error", "message": "no"}}'}]
    reply = scripted.post("/v1/chat/completions", json={"messages": messages}).json()
    assert reply["choices"][0]["message"]["content"] == "The tool failed: no"
    plain = scripted.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert "tool_calls" not in plain["choices"][0]["message"]
    assert plain["choices"][0]["message"]["content"].startswith("I have nothing to look up")


def test_responses_route_returns_function_call_items(scripted):
    body = {"input": "Is it sunny in Paris?", "tools": [WEATHER_TOOL]}
    reply = scripted.post("/v1/responses", json=body)
    assert reply.status_code == 200
    response = Response.model_validate(reply.json())
    assert response.object == "response" and response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"Paris"}'


def test_models_route_and_input_errors(scripted):
    assert scripted.get("/v1/models").json()["data"][0]["id"] == "policy"
    assert scripted.post("/v1/chat/completions", json={"messages": "hi"}).status_code == 422
    assert scripted.post("/v1/responses", json={"input": "hi", "stream": True}).status_code == 422
    reply = scripted.post("/v1/responses", json={"input": "hi", "tools": [{"type": "web_search"}]})
    assert reply.status_code == 422 and "only function tools" in reply.json()["error"]["message"]


def test_scripted_engine_answers_completions_and_tokenize_with_a_clear_501(scripted):
    for route, body in (("/v1/completions", {"prompt": "Hello"}), ("/v1/completions", {"prompt": [1, 2]}),
                        ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})):
        reply = scripted.post(route, json=body)
        assert reply.status_code == 501, route
        error = reply.json()["error"]
        assert error["type"] == "not_implemented" and route in error["message"] and "engine: native" in error["message"]
    # Bodies are validated before the engine is asked.
    both = scripted.post("/tokenize", json={"prompt": "x", "messages": [{"role": "user", "content": "x"}]})
    assert both.status_code == 422 and "exactly one of" in both.json()["error"]["message"]
    assert scripted.post("/v1/completions", json={"prompt": ["a", "b"]}).status_code == 422  # one prompt only
    assert scripted.post("/v1/completions", json={"prompt": "x", "n": 2}).status_code == 422


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown policy engine 'gpt'; available: scripted, openai"):
        PolicyServer("policy", {"engine": "gpt"})


# ---------------------------------------------------------------------------------------------- conversion


def test_responses_to_chat_merges_one_model_call_and_keeps_its_tokens():
    params = ResponseCreateParams.model_validate({
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather "},
                                         {"type": "input_text", "text": "in Paris"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "use the tool"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}',
             **TOKENS},
            {"type": "function_call_output", "call_id": "c1", "output": '{"temperature_c": 18}'},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "18 C"}], **TOKENS},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 64,
        "temperature": 0.5,
        "metadata": {"extra_body": '{"top_k": 20}'},
    })
    chat = responses_to_chat(params)
    roles = [m.role for m in chat.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert chat.messages[1].content == "weather in Paris"
    turn = chat.messages[2]
    assert turn.reasoning_content == "use the tool" and turn.tool_calls[0].function.name == "get_weather"
    assert turn.generation_token_ids == [3, 4] and turn.prompt_token_ids == [1, 2]
    assert chat.messages[3].tool_call_id == "c1"
    assert chat.messages[4].content == "18 C" and chat.messages[4].generation_log_probs == [-0.1, -0.2]
    assert chat.tools[0].function.name == "get_weather"
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.max_tokens == 64 and chat.temperature == 0.5 and chat.model_extra["top_k"] == 20
    assert "top_p" not in chat.model_dump(exclude_unset=True)  # unset stays unset for the upstream


def test_chat_to_response_puts_tokens_on_the_last_item():
    chat = ChatCompletionResponse.model_validate({"model": "m", "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "let me check", "reasoning_content": "hmm",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}], **TOKENS}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}})
    response = chat_to_response(chat, ResponseCreateParams(input="x"))
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert response.output[-1].generation_token_ids == [3, 4]
    assert not response.output[0].has_tokens and not response.output[1].has_tokens
    assert response.usage.total_tokens == 4 and response.status == "completed"
    truncated = ChatCompletionResponse.model_validate(
        {"choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "abc"}}]})
    cut = chat_to_response(truncated, ResponseCreateParams(input="x"))
    assert cut.status == "incomplete" and cut.incomplete_details == {"reason": "max_output_tokens"}


def test_chat_to_response_carries_cached_and_reasoning_token_counts():
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
             "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 3}}
    chat = ChatCompletionResponse.model_validate(
        {"choices": [{"message": {"role": "assistant", "content": "hi"}}], "usage": usage})
    response = chat_to_response(chat, ResponseCreateParams(input="x")).model_dump(mode="json")
    assert response["usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                                 "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                                 "output_tokens_details": {"reasoning_tokens": 3}}
    plain = ChatCompletionResponse.model_validate({"choices": [{"message": {"role": "assistant", "content": "hi"}}],
                                                   "usage": {"prompt_tokens_details": None}})
    usage = chat_to_response(plain, ResponseCreateParams(input="x")).usage.model_dump()
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}  # present as OpenAI clients expect, 0 if unknown
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}


# ---------------------------------------------------------------------------------------------- openai engine


def fake_upstream(replica: str, seen: list) -> FastAPI:
    """An OpenAI-compatible upstream that records what it got and says which replica answered."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        seen.append({"replica": replica, "auth": request.headers.get("authorization"), "body": body})
        if body["messages"][-1]["content"] == "fail":
            return _error(400, "This model's maximum context length is 4096 tokens.")
        if body["messages"][-1]["content"] == "bad":
            return _error(400, "temperature must be >= 0")
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": replica, **TOKENS}}]}

    return app


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"message": message}}, status_code=status)


async def test_openai_engine_forwards_sticky_per_session_with_the_key(serve, caplog):
    seen: list = []
    urls = [await serve(fake_upstream(f"r{i}", seen)) + "/v1" for i in range(2)]
    config = {"engine": "openai", "base_url": urls, "api_key": "sk-secret-123", "model": "served-model",
              "extra_body": {"top_k": 5}}
    caplog.set_level(logging.DEBUG)
    server = PolicyServer("policy", config)
    assert "sk-secret-123" not in repr(server.config) + repr(server.engine.config) + str(server.config.model_dump())
    policy = await serve(server.build_app())
    client = get_client()
    replicas = {}
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    # Issued ids are random: 24 of them all on one of 2 replicas has odds 2**-23.
    sessions = [(await client.post(policy, "/v1/chat/completions", hi)).headers["X-Session-Id"] for _ in range(24)]
    for session in sessions:  # each issued by the policy on a first call, then sent back
        for _ in range(3):
            reply = await client.post(policy, "/v1/chat/completions", hi, headers={"X-Session-Id": session})
            assert reply.status_code == 200
            replicas.setdefault(session, set()).add(reply.json()["choices"][0]["message"]["content"])
    assert all(len(r) == 1 for r in replicas.values())  # each session stays on one replica
    assert set().union(*replicas.values()) == {"r0", "r1"}  # and sessions spread over both
    assert {s["auth"] for s in seen} == {"Bearer sk-secret-123"}
    assert seen[0]["body"]["model"] == "served-model" and seen[0]["body"]["top_k"] == 5
    reply = await client.post(policy, "/v1/responses", {"input": "hi"}, headers={"X-Session-Id": sessions[0]})
    [message] = reply.json()["output"]
    assert message["generation_token_ids"] == [3, 4]  # token fields survive the conversion
    user = {"role": "user", "content": "hi"}
    assert (await client.post(policy, "/v1/responses", {"input": [user, message, user]})).status_code == 200
    assert "generation_token_ids" not in seen[-1]["body"]["messages"][1]  # not sent upstream unless asked
    assert "sk-secret-123" not in caplog.text


async def test_openai_engine_errors_are_statuses_not_answers(serve):
    seen: list = []
    upstream = await serve(fake_upstream("r0", seen)) + "/v1"
    policy = await serve(PolicyServer("policy", {"engine": "openai", "base_url": upstream}).build_app())
    full = await get_client().post(policy, "/v1/responses", {"input": "fail"})  # context overflow upstream
    assert full.status_code == 200
    assert full.json()["status"] == "incomplete" and full.json()["incomplete_details"]["reason"] == "max_output_tokens"
    bad = await get_client().post(policy, "/v1/chat/completions", {"messages": [{"role": "user", "content": "bad"}]})
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]
    down = await serve(PolicyServer("policy", {"engine": "openai", "base_url": "http://127.0.0.1:9/v1"}).build_app())
    reply = await get_client().post(down, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 502 and reply.json()["error"]["type"] == "upstream_unreachable"


def test_openai_engine_without_base_url_is_a_config_error():
    with pytest.raises(Exception, match="base_url"):
        create_engine("openai", {"engine": "openai"}, "policy")


def test_engine_interface_accepts_module_class_names():
    engine = create_engine("servers.policy.engines.scripted:ScriptedEngine", {}, "p")
    assert engine.model_name == "p"
    assert isinstance(ChatCompletionRequest(messages=[{"role": "user", "content": "x"}]), ChatCompletionRequest)
