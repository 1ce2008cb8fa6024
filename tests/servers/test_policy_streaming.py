"""`stream: true` on /v1/chat/completions and /v1/responses with the native engine, through the official `openai`
client's streaming API, unchanged: tokens arrive as they are sampled, the joined deltas are the non-streamed
answer, usage comes last, Responses events are what `client.responses.stream()` accumulates, a client that
leaves frees the engine, and an error after the first chunk reaches the client as an APIError.

Random weights never write a well-formed tool call, so tool calls and reasoning are streamed through a scripted
test double in place of the engine thread (`ScriptedStream`); everything else runs the real model.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")

from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response as SdkResponse

from model.engine import Delta, GenerationResult  # after the importorskip: model needs torch

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
CALL = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
FREE = {"ignore_eos": True}


def native(**config) -> PolicyServer:
    return PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny", "threads": 1,
                                   "max_batch": 4, "max_len": 4096, **config})


@pytest.fixture(autouse=True)
def torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
async def policy(serve):
    """(AsyncOpenAI client, PolicyServer, base URL) for a native policy server on builtin:tiny."""
    server = native()
    url = await serve(server.build_app())
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client, server, url


def slow_steps(server: PolicyServer, seconds: float = 0.005) -> None:
    """Make each engine step take a little longer, so a stream's tokens are spread over visible time."""
    generator = server.engine.generator
    step = generator.step

    def slowed():
        time.sleep(seconds)
        return step()

    generator.step = slowed


async def test_chat_stream_is_incremental_and_joins_to_the_non_streamed_answer(policy):
    client, server, _ = policy
    slow_steps(server)
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 40, "seed": 3, "extra_body": FREE}
    whole = (await client.chat.completions.create(**body)).choices[0]
    stats = server.engine.generator.stats
    stream = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    chunks, steps_seen = [], []
    async for chunk in stream:
        assert isinstance(chunk, ChatCompletionChunk)
        chunks.append(chunk)
        steps_seen.append(stats.steps)
    text_chunks = [c for c in chunks if c.choices and (c.choices[0].delta.content or
                                                       (c.choices[0].delta.model_extra or {}).get("reasoning_content"))]
    assert len(text_chunks) >= 3 and steps_seen[0] < steps_seen[-1]  # chunks came while the engine generated
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == (whole.message.model_extra.get("reasoning_content") or "")
    assert content == whole.message.content
    last_choice = [c for c in chunks if c.choices][-1]
    assert last_choice.choices[0].finish_reason == whole.finish_reason
    fields = last_choice.choices[0].delta.model_extra
    assert fields["generation_token_ids"] == whole.message.model_extra["generation_token_ids"]
    assert fields["generation_log_probs"] == pytest.approx(whole.message.model_extra["generation_log_probs"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens is not None
    assert chunks[0].choices[0].delta.role == "assistant"


async def test_chat_stream_headers_logprobs_and_usage_only_when_asked(policy):
    client, _, _ = policy
    raw = await client.chat.completions.with_raw_response.create(
        model="tiny", messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True,
        extra_body=FREE)
    assert raw.headers["X-Model-Version"] == "0" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = [chunk async for chunk in raw.parse()]
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 6 and all(len(e.top_logprobs) == 2 for e in entries)
    assert all(c.choices for c in chunks)  # no usage chunk without stream_options.include_usage
    assert chunks[0].model_extra["metadata"] == {"model_version": "0"}


async def test_responses_stream_helper_accumulates_the_same_response(policy):
    client, server, _ = policy
    slow_steps(server)
    body = {"model": "tiny", "input": QUESTION, "max_output_tokens": 30, "temperature": 0,
            "extra_body": {"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True}}
    whole = await client.responses.create(**body)
    kinds, text = [], ""
    async with client.responses.stream(**body) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
    # Cut by max_output_tokens: OpenAI ends such a stream with response.incomplete (the helper's
    # get_final_response wants response.completed, so the whole response is taken from this event).
    final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert kinds.count("response.output_text.delta") >= 3
    assert text == whole.output_text == final.output_text
    assert [item.type for item in final.output] == [item.type for item in whole.output]
    assert final.output[-1].model_extra["generation_token_ids"] == whole.output[-1].model_extra["generation_token_ids"]
    assert final.usage.output_tokens == whole.usage.output_tokens == 30
    assert final.metadata["model_version"] == "0"


async def test_responses_create_stream_events_validate_and_end_with_the_whole_response(policy):
    client, _, _ = policy
    stream = await client.responses.create(model="tiny", input="hi", max_output_tokens=8, stream=True,
                                           extra_body=FREE)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    final = events[-1].response
    assert isinstance(final, SdkResponse) and final.status == "incomplete"
    added = [e.item.id for e in events if e.type == "response.output_item.added"]
    assert added == [item.id for item in final.output]  # the items keep the ids they streamed with


async def test_a_conversation_that_fills_max_len_streams_an_empty_length_answer(serve):
    url = await serve(native(max_len=64).build_app())
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        chunks = [c async for c in await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "word " * 100}], stream=True)]
    choices = [c.choices[0] for c in chunks if c.choices]
    assert choices[0].delta.role == "assistant" and choices[-1].finish_reason == "length"
    assert "".join(c.delta.content or "" for c in choices) == ""
    assert choices[-1].delta.model_extra["generation_token_ids"] == []


# ------------------------------------------------------------------------ scripted text (test double)


class ScriptedStream:
    """Test double for the engine thread: streams a fixed text token by token, then its GenerationResult; like the
    engine, it ends at a stop string (the result's text cut before it) or with the end-of-turn id."""

    def __init__(self, runner, tok, text: str) -> None:
        self.runner, self.tok, self.text = runner, tok, text

    async def stream(self, request):
        ids, stops = [], request.params.stop
        for token in [*self.tok.encode(self.text), self.tok.im_end_id]:
            await asyncio.sleep(0)
            ids.append(token)
            yield [Delta(request.request_id, token, -0.5, None, "0")]
            if any(stop in self.tok.decode(ids) for stop in stops):
                break
        text = self.tok.decode(ids[:-1] if ids[-1] == self.tok.im_end_id else ids)
        for stop in stops:
            text = text.split(stop)[0]
        reasoning = len(self.tok.encode(text.split("</think>")[0]))
        yield [GenerationResult(request.request_id, request.prompt_token_ids, ids, [-0.5] * len(ids), "stop",
                                text=text, num_reasoning_tokens=reasoning)]

    def __getattr__(self, name):
        return getattr(self.runner, name)


async def scripted(serve, tok, text: str):
    server = native()
    url = await serve(server.build_app())
    server.engine._runner = ScriptedStream(server.engine._runner, tok, text)
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


async def test_reasoning_and_tool_calls_stream_in_their_own_fields(serve, tok):
    async with await scripted(serve, tok, f"The user asks about Paris.\n</think>\nLet me check. {CALL}") as client:
        chunks = [c async for c in await client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=[TOOL], stream=True)]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        content = "".join(d.content or "" for d in deltas)
        assert reasoning == "The user asks about Paris." and content == "Let me check."
        assert not any("<tool_call>" in (d.content or "") for d in deltas)  # held back, never sent as text
        [call] = deltas[-1].tool_calls
        assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
        assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "tool_calls"

        async with client.responses.stream(model="tiny", input=QUESTION,
                                           tools=[{"type": "function", **TOOL["function"]}]) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
        assert final.output[0].summary[0].text == "The user asks about Paris."
        assert final.output_text == "Let me check." and final.output[2].arguments == '{"city": "Paris"}'
        assert "response.reasoning_summary_text.delta" in kinds and "response.function_call_arguments.done" in kinds
        assert kinds[-1] == "response.completed"


async def test_stop_strings_are_never_streamed(serve, tok):
    async with await scripted(serve, tok, "</think>Sunny and warm. STOP here, then more.") as client:
        chunks = [c async for c in await client.chat.completions.create(
            model="tiny", messages=QUESTION, stop=["STOP"], stream=True)]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "STOP" not in content and content.startswith("Sunny and warm.")


# ------------------------------------------------------------------------------ leaving and failing


async def test_a_client_leaving_a_stream_frees_the_engine(policy):
    _, server, url = policy
    slow_steps(server)
    runner, generator = server.engine._runner, server.engine.generator
    endless = {"messages": QUESTION, "max_tokens": 3000, "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http, \
            http.stream("POST", "/v1/chat/completions", json=endless) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                break  # leave after the first chunk; closing the response closes the connection
    for _ in range(3000):
        if not generator.has_work():
            break
        await asyncio.sleep(0.01)
    assert not generator.has_work() and runner.cancelled == 1


async def test_an_error_after_the_first_chunk_reaches_the_client_as_an_api_error(serve):
    server = native(request_timeout=0.5)
    url = await serve(server.build_app())
    slow_steps(server, 0.02)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        stream = await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=3000, stream=True,
                                                      extra_body=FREE)
        with pytest.raises(openai.APIError, match="request_timeout"):
            async for _ in stream:
                pass


async def test_engines_without_streaming_answer_a_clear_4xx(serve):
    url = await serve(PolicyServer("policy", {"kind": "policy", "engine": "scripted"}).build_app())
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.UnprocessableEntityError, match="does not stream"):
            await client.chat.completions.create(model="x", messages=QUESTION, stream=True)
        with pytest.raises(openai.UnprocessableEntityError, match="does not stream"):
            await client.responses.create(model="x", input="hi", stream=True)
