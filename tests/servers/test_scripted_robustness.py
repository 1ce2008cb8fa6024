"""The scripted policy under hostile input: linear in the text, long conversations off the loop, bad tool
schemas and bad `metadata.extra_body` answered 422 with the field named (issue 10, findings 4 and 7)."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from servers.policy.engines import scripted
from servers.policy.server import PolicyServer

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
def policy():
    with TestClient(PolicyServer("policy", {"kind": "policy", "engine": "scripted"}).build_app()) as client:
        yield client


def long_text(chars: int) -> str:
    """Prose full of capitalized words and sentence ends: the worst case of the old name finder."""
    sentence = "What about the weather in New York today? Tell me. In Paris it is Sunny and Warm for Lima. "
    return (sentence * (chars // len(sentence) + 1))[:chars]


@pytest.mark.timeout(60)  # the quadratic finder took about 7 minutes on this text; the linear one milliseconds
def test_name_finding_is_linear_in_the_text() -> None:
    names = scripted._names(long_text(1_000_000))
    assert names[-1] == "Lima" and "New York" in names


@pytest.mark.timeout(120)
def test_a_140kb_message_is_answered_off_the_loop(policy, monkeypatch) -> None:
    threads: list[int] = []
    real = scripted.scripted_reply
    monkeypatch.setattr(scripted, "scripted_reply", lambda request: threads.append(threading.get_ident()) or
                        real(request))
    reply = policy.post("/v1/responses", json={"input": long_text(140_000), "tools": [WEATHER]})
    assert reply.status_code == 200 and reply.json()["output"][0]["name"] == "get_weather"
    small = policy.post("/v1/responses", json={"input": "Weather in Paris?", "tools": [WEATHER]})
    assert small.status_code == 200
    loop_thread = threads[1]  # a short conversation is answered on the loop itself
    assert threads[0] != loop_thread  # the long one in a worker thread, so /health is never held up by it


@pytest.mark.parametrize("properties, field", [
    ({"city": {"type": "string", "enum": []}}, "properties.city.enum must be a non-empty list"),
    ({"city": {"enum": "Paris"}}, "properties.city.enum must be a non-empty list"),
    ({"city": "string"}, "properties.city must be a JSON-schema object, not str"),
    ({"city": ["string"]}, "properties.city must be a JSON-schema object, not list"),
    (["city"], "parameters.properties must be an object"),
])
def test_unusable_tool_schema_is_a_422_naming_the_field(policy, properties, field) -> None:
    tool = {**WEATHER, "parameters": {"type": "object", "properties": properties}}
    for route, body in (("/v1/responses", {"input": "Weather in Paris?", "tools": [tool]}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Weather in Paris?"}],
                                                  "tools": [{"type": "function", "function": {
                                                      k: v for k, v in tool.items() if k != "type"}}]})):
        reply = policy.post(route, json=body)
        assert reply.status_code == 422, (route, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request" and field in error["message"] and "get_weather" in error["message"]


@pytest.mark.parametrize("extra_body, message", [
    ("[1]", "metadata.extra_body must be a JSON object as a string, not a JSON list"),
    ('"x"', "not a JSON str"),
    ("{not json", "metadata.extra_body must be a JSON object as a string; it is not JSON"),
    ('{"messages": []}', "messages may not be set by metadata.extra_body"),
    ('{"tools": 5, "temperature": 1}', "temperature, tools may not be set"),
    ('{"n": 0}', "metadata.extra_body: n: Input should be greater than or equal to 1"),
])
def test_bad_extra_body_is_a_422_naming_it(policy, extra_body, message) -> None:
    body = {"input": "hi", "temperature": 0.5, "tools": [WEATHER], "metadata": {"extra_body": extra_body}}
    reply = policy.post("/v1/responses", json=body)
    assert reply.status_code == 422, reply.text
    assert message in reply.json()["error"]["message"]


def test_bad_chat_template_kwargs_and_clashing_extra_keys_are_422(policy) -> None:
    reply = policy.post("/v1/responses", json={"input": "hi", "metadata": {"chat_template_kwargs": "[]"}})
    assert reply.status_code == 422 and "metadata.chat_template_kwargs" in reply.json()["error"]["message"]
    reply = policy.post("/v1/responses", json={"input": "hi", "messages": []})
    assert reply.status_code == 422 and "messages may not be set" in reply.json()["error"]["message"]
    fine = policy.post("/v1/responses", json={"input": "hi", "metadata": {"extra_body": '{"top_k": 3}'}})
    assert fine.status_code == 200


def test_a_tool_that_is_not_an_object_is_a_422(policy) -> None:
    for tools in ([None], [7], ["get_weather"]):  # null was a 500 (AttributeError in the tool discriminator)
        reply = policy.post("/v1/responses", json={"input": "hi", "tools": tools})
        assert reply.status_code == 422 and "tools.0" in reply.json()["error"]["message"], reply.text
