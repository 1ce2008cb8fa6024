"""Reasoning over HTTP with the native engine and the official `openai` client, on both routes: reasoning on or off
per request, returned apart from the answer, a per-request thinking budget that holds (reasoning tokens <=
budget + grace), and the count in `usage`.
"""

from __future__ import annotations

import json

import pytest

from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")

FREE = {"ignore_eos": True}


@pytest.fixture
async def client(serve):
    threads = torch.get_num_threads()
    server = PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny", "threads": 1,
                                     "max_batch": 4, "max_len": 2048})
    url = await serve(server.build_app())
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk
    torch.set_num_threads(threads)


def reasoning_of(tok, ids: list[int]) -> int:
    """How many generated tokens come before </think> (all of them when it never closes)."""
    return ids.index(tok.think_end_id) if tok.think_end_id in ids else len(ids)


@pytest.mark.parametrize("budget_keys", [
    {"thinking_budget": 6, "thinking_grace": 4},
    {"vllm_xargs": {"thinking_budget": 6, "thinking_budget_grace_period": 4}},  # NVIDIA's keys for vLLM
])
async def test_chat_thinking_budget_holds_and_reasoning_comes_apart(client, tok, budget_keys):
    for seed in range(3):
        completion = await client.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=60, seed=seed, extra_body={**FREE, **budget_keys})
        message = completion.choices[0].message
        ids = message.model_extra["generation_token_ids"]
        reasoning_tokens = completion.usage.completion_tokens_details.reasoning_tokens
        assert reasoning_tokens == reasoning_of(tok, ids) <= 6 + 4
        assert ids[reasoning_tokens] == tok.think_end_id  # closed by the budget, not cut off by max_tokens
        reasoning = message.model_extra.get("reasoning_content")
        assert reasoning is None or "</think>" not in reasoning
        assert message.content is None or "</think>" not in message.content
        assert tok.decode(ids[:reasoning_tokens]).strip() == (reasoning or "")


async def test_chat_reasoning_off_per_request(client, tok):
    for extra in ({"chat_template_kwargs": {"enable_thinking": False}}, {"reasoning_effort": "none"}):
        completion = await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8,
                                                          extra_body={**FREE, **extra})
        message = completion.choices[0].message
        assert tok.decode(message.model_extra["prompt_token_ids"]).endswith("<think></think>")
        assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    on = await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8, reasoning_effort="low",
                                              extra_body=FREE)
    assert tok.decode(on.choices[0].message.model_extra["prompt_token_ids"]).endswith("<think>\n")


async def test_responses_reasoning_item_budget_and_usage(client, tok):
    # NeMo Gym passes vLLM keys through metadata.extra_body, a JSON string (metadata values are strings).
    response = await client.responses.create(
        model="tiny", input=QUESTION, max_output_tokens=60, reasoning={"effort": "high"},
        metadata={"extra_body": json.dumps({"thinking_budget": 5, "thinking_grace": 2, "ignore_eos": True})})
    reasoning_tokens = response.usage.output_tokens_details.reasoning_tokens
    ids = response.output[-1].model_extra["generation_token_ids"]
    assert reasoning_tokens == reasoning_of(tok, ids) <= 5 + 2 and ids[reasoning_tokens] == tok.think_end_id
    kinds = [item.type for item in response.output]
    assert kinds[0] == "reasoning" and "message" in kinds
    assert response.output[0].summary[0].text == tok.decode(ids[:reasoning_tokens]).strip()


async def test_responses_reasoning_off_by_effort_or_nemo_gym_metadata(client, tok):
    for options in ({"reasoning": {"effort": "none"}},
                    {"metadata": {"chat_template_kwargs": json.dumps({"enable_thinking": False})}}):
        response = await client.responses.create(model="tiny", input=QUESTION, max_output_tokens=6,
                                                 extra_body=FREE, **options)
        assert tok.decode(response.output[-1].model_extra["prompt_token_ids"]).endswith("<think></think>")
        assert response.usage.output_tokens_details.reasoning_tokens == 0


async def test_streamed_reasoning_holds_the_budget_on_both_routes(client, tok):
    chunks = [c async for c in await client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=40, stream=True, stream_options={"include_usage": True},
        extra_body={**FREE, "thinking_budget": 4, "thinking_grace": 3})]
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens <= 7
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    ids = [c for c in chunks if c.choices][-1].choices[0].delta.model_extra["generation_token_ids"]
    assert reasoning == tok.decode(ids[:reasoning_of(tok, ids)]).strip()
    async with client.responses.stream(model="tiny", input=QUESTION, max_output_tokens=40,
                                       extra_body={**FREE, "thinking_budget": 4, "thinking_grace": 3}) as stream:
        events = [event async for event in stream]
    final = events[-1].response
    assert final.usage.output_tokens_details.reasoning_tokens <= 7
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert final.output[0].type == "reasoning" and deltas == final.output[0].summary[0].text
