"""`engine: openai` through a real policy server process, with the official `openai` client, unchanged.

The stack is two policy servers started as `gym up` starts them, both in front of `benchmarks/stub_upstream.py`
(its own process, streaming as vLLM does: the answer a word at a time, a tool call's name and then its
arguments in pieces): `policy` plain, `trainer` with `return_token_ids` (the stub then sends vLLM's token ids
and log-probs, in every chunk when streaming). Checked on both routes: `client.chat.completions.create(
stream=True)`, `client.chat.completions.stream()`, `client.responses.create(stream=True)` and
`client.responses.stream()` give what the non-streamed call gives, usage last; and `n` > 1 comes back whole.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gym_core.config import load_config
from gym_core.launcher import launch
from gym_core.protocol import TOKEN_FIELDS

openai = pytest.importorskip("openai")

from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response as SdkResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from stub_upstream import start_stub

from tests.servers.weather_tool import CHAT_TOOL, RESPONSES_TOOL

HELLO = [{"role": "user", "content": "Say hello to Ada"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, Any]]:
    """Official clients of the two policy server processes: {"policy": plain, "trainer": return_token_ids}."""
    with start_stub(tool_calls=1) as (_, base_url):
        upstream = {"kind": "policy", "engine": "openai", "base_url": base_url, "model": "stub"}
        config = {"servers": {"policy": upstream, "trainer": {**upstream, "return_token_ids": True}}}
        with launch(load_config(config), echo_logs=False) as stack:
            made = {name: openai.OpenAI(base_url=stack.url(name) + "/v1", api_key="unused", max_retries=0,
                                        timeout=60) for name in ("policy", "trainer")}
            try:
                yield made
            finally:
                for client in made.values():
                    client.close()


def extra(model: Any) -> dict[str, Any]:
    return model.model_extra or {}


def test_chat_stream_joins_to_the_whole_answer_with_usage_last(clients):
    client = clients["policy"]
    whole = client.chat.completions.create(model="stub", messages=HELLO)
    raw = client.chat.completions.with_raw_response.create(model="stub", messages=HELLO, stream=True,
                                                            stream_options={"include_usage": True})
    assert raw.headers["X-Model-Version"] == "0" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and extra(chunks[0])["metadata"] == {"model_version": "0"}
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    plain = list(client.chat.completions.create(model="stub", messages=HELLO, stream=True))
    assert all(chunk.choices for chunk in plain)  # the usage chunk only when asked


def test_chat_stream_helper_accumulates_a_tool_call_streamed_in_pieces(clients):
    client = clients["policy"]
    with client.chat.completions.stream(model="stub", messages=WEATHER, tools=[CHAT_TOOL]) as stream:
        arguments = [event.arguments_delta for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(arguments) > 1  # the arguments came in pieces, as vLLM streams them
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'
    assert final.choices[0].finish_reason == "tool_calls"


def test_responses_stream_ends_with_the_non_streamed_response(clients):
    client = clients["policy"]
    whole = client.responses.create(model="stub", input="Say hello to Ada")
    events = list(client.responses.create(model="stub", input="Say hello to Ada", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    final = events[-1].response
    assert isinstance(final, SdkResponse) and final.output_text == whole.output_text
    assert final.usage == whole.usage and final.usage.input_tokens_details.cached_tokens == 0
    assert final.metadata == whole.metadata == {"model_version": "0"}


def test_responses_stream_helper_gives_the_function_call(clients):
    client = clients["policy"]
    with client.responses.stream(model="stub", input=WEATHER, tools=[RESPONSES_TOOL]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    [call] = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"Paris"}'
    assert call.call_id.startswith("call_") and final.usage.output_tokens > 0


def test_training_streams_carry_each_choices_token_fields(clients):
    client = clients["trainer"]
    whole = client.chat.completions.create(model="stub", messages=HELLO, n=2)
    chunks = list(client.chat.completions.create(model="stub", messages=HELLO, n=2, stream=True))
    for choice in whole.choices:
        finishing = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index
                     and c.choices[0].finish_reason]
        [last] = finishing
        fields = extra(last.delta)
        assert {name: fields[name] for name in TOKEN_FIELDS} == {name: extra(choice.message)[name]
                                                                 for name in TOKEN_FIELDS}
        text = "".join(c.choices[0].delta.content or "" for c in chunks
                       if c.choices and c.choices[0].index == choice.index)
        assert text == choice.message.content
        assert bytes(fields["generation_token_ids"]).decode() == text  # the stub's ids are the text's bytes
    assert all("token_ids" not in extra(c.choices[0]) for c in chunks if c.choices)  # vLLM's copies removed
    with client.responses.stream(model="stub", input=WEATHER, tools=[RESPONSES_TOOL]) as stream:
        final = stream.get_final_response()
    [call] = final.output
    assert extra(call)["generation_token_ids"] == list(b"get_weather" + b'{"city":"Paris"}')


def test_n_samples_come_back_as_every_choice(clients):
    for name in ("policy", "trainer"):
        reply = clients[name].chat.completions.create(model="stub", messages=HELLO, n=3)
        assert [choice.index for choice in reply.choices] == [0, 1, 2]
        assert len({choice.message.content for choice in reply.choices}) == 3
        prompts = [extra(choice.message).get("prompt_token_ids") for choice in reply.choices]
        if name == "trainer":  # one prompt, each sample its own generation
            assert prompts[0] and prompts.count(prompts[0]) == 3
            assert all(len(extra(c.message)["generation_token_ids"]) == len(extra(c.message)["generation_log_probs"])
                       for c in reply.choices)
        else:
            assert prompts == [None, None, None]
    calls = clients["policy"].chat.completions.create(model="stub", messages=WEATHER, tools=[CHAT_TOOL], n=2)
    assert len({choice.message.tool_calls[0].id for choice in calls.choices}) == 2
    with pytest.raises(openai.UnprocessableEntityError, match="Responses API has no n"):
        clients["policy"].responses.create(model="stub", input="hi", extra_body={"n": 2})
