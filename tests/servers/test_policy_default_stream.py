"""`Engine.chat_stream`'s default: an engine that makes its answer all at once (the scripted engine) streams it
a word per chunk on both routes, through the official `openai` client's streaming API, unchanged; an error
before the first chunk is a plain HTTP error."""

from __future__ import annotations

from typing import Any

import pytest

from gym_core.protocol import ChatCompletionRequest, ChatCompletionResponse
from servers.policy.engines.base import Engine, EngineError
from servers.policy.server import PolicyServer
from tests.servers.weather_tool import CHAT_TOOL, RESPONSES_TOOL

openai = pytest.importorskip("openai")

WEATHER = [{"role": "user", "content": "What's the weather in New York today?"}]


async def client_for(serve, config: dict[str, Any]) -> Any:
    url = await serve(PolicyServer("policy", {"kind": "policy", **config}).build_app())
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


async def test_scripted_chat_streams_its_answer_a_word_at_a_time(serve):
    client = await client_for(serve, {"engine": "scripted", "token_ids": True})
    answered = [*WEATHER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "New York"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature_c": 21, "condition": "windy"}'}]
    whole = (await client.chat.completions.create(model="policy", messages=answered)).choices[0]
    stream = await client.chat.completions.create(model="policy", messages=answered, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert words == ["temperature_c: ", "21, ", "condition: ", "windy."]
    assert "".join(words) == whole.message.content
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "stop"
    assert last.delta.model_extra["generation_token_ids"] == whole.message.model_extra["generation_token_ids"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].model_extra["metadata"] == {"model_version": "0"}
    async with client.chat.completions.stream(model="policy", messages=WEATHER, tools=[CHAT_TOOL]) as helper:
        final = await helper.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"New York"}'
    await client.close()


async def test_scripted_responses_stream_helper_gives_the_non_streamed_response(serve):
    client = await client_for(serve, {"engine": "scripted"})
    for request in ({"input": "Hello there"}, {"input": WEATHER, "tools": [RESPONSES_TOOL]}):
        whole = await client.responses.create(model="policy", **request)
        async with client.responses.stream(model="policy", **request) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert [item.type for item in final.output] == [item.type for item in whole.output]
        assert final.output_text == whole.output_text and final.usage == whole.usage
    assert final.output[0].arguments == '{"city":"New York"}'
    await client.close()


class Failing(Engine):
    """A test double: an engine whose every generation fails the way an overloaded upstream does."""

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        raise EngineError("the upstream is overloaded; retry later", 503, "unavailable")


async def test_an_error_before_the_first_chunk_is_a_plain_http_error(serve):
    client = await client_for(serve, {"engine": f"{__name__}:Failing"})
    with pytest.raises(openai.InternalServerError, match="overloaded") as caught:
        await client.chat.completions.create(model="policy", messages=WEATHER, stream=True)
    assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError, match="overloaded"):
        await client.responses.create(model="policy", input="hi", stream=True)
    with pytest.raises(openai.UnprocessableEntityError, match="one choice"):  # n > 1 where the engine has no n
        await client.chat.completions.create(model="policy", messages=WEATHER, n=2, stream=True)
    await client.close()
