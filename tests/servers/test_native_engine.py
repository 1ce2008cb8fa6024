"""The native engine: builtin:tiny (random weights, so the text is arbitrary) behind the policy server's routes.

What is checked is the contract, not the text: the response shape, token fields that are exactly what the
model read and wrote, seeds, max_tokens, multi-turn prompts extended from the previous turn's ids (never
re-tokenized), tool-call parsing (forced through a scripted test-double runner, since random weights never
write a well-formed call), and 4xx errors for bad requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gym_core.protocol import ChatCompletionRequest, Response
from model.tokenizer import ChatTokenizer, parse_generation
from servers.policy.engines.base import EngineError
from servers.policy.engines.native import NativeConfig, NativeEngine
from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION, native_policy, record_results

torch = pytest.importorskip("torch")

ROOT = Path(__file__).parents[2]
CHAT_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
RESPONSES_TOOL = {"type": "function", **CHAT_TOOL["function"]}
POLICY = {"kind": "policy", "engine": "native", "model": "builtin:tiny", "max_len": 1024, "max_batch": 4,
          "threads": 1}



@pytest.fixture(scope="module")
def server():
    """One native policy server on builtin:tiny for the module (the model loads once)."""
    with native_policy(max_len=1024, max_batch=4) as client:
        yield client


def chat(client: TestClient, messages: list, **body) -> dict:
    reply = client.post("/v1/chat/completions", json={"messages": messages, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


def generated_text(tok: ChatTokenizer, ids: list[int]) -> str:
    """The text the model wrote: its ids decoded, without the end-of-turn id it stopped on."""
    return tok.decode(ids[:-1] if ids and ids[-1] in tok.eos_ids else ids)


# ------------------------------------------------------------------------------------------- one turn


def test_completion_shape_and_token_fields_are_what_the_model_saw_and_wrote(server, tok, monkeypatch):
    results = record_results(server, monkeypatch)
    body = chat(server, QUESTION, tools=[CHAT_TOOL], max_tokens=24, seed=3)
    assert body["object"] == "chat.completion" and body["model"] == "builtin:tiny"
    [choice] = body["choices"]
    message = choice["message"]
    assert message["role"] == "assistant" and choice["finish_reason"] in ("stop", "length", "tool_calls")
    prompt, ids, logprobs = message["prompt_token_ids"], message["generation_token_ids"], message["generation_log_probs"]
    assert 1 <= len(ids) <= 24 and len(ids) == len(logprobs)
    assert all(math.isfinite(lp) and lp <= 0 for lp in logprobs)
    # The prompt is the chat template's rendering, tokenized: thinking on by default.
    rendered = tok.apply_chat_template(QUESTION, [CHAT_TOOL])
    assert tok.decode(prompt) == rendered and prompt == tok.encode(rendered)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n")
    # The ids are the engine's, and the message is the parse of exactly the text they decode to.
    [result] = results
    assert (ids, logprobs, prompt) == (result.token_ids, result.logprobs, result.prompt_token_ids)
    assert generated_text(tok, ids) == result.text
    parsed = parse_generation(result.text, thinking=True, tools=[CHAT_TOOL])
    assert message.get("reasoning_content") == parsed.reasoning
    assert (message["content"] or "") == parsed.content
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (len(prompt), len(ids))
    assert usage["total_tokens"] == len(prompt) + len(ids)
    assert usage["completion_tokens_details"]["reasoning_tokens"] <= len(ids)


def test_same_seed_same_tokens_other_seed_other_tokens(server):
    def ids(seed: int) -> tuple[list[int], list[float]]:
        message = chat(server, QUESTION, max_tokens=12, seed=seed, ignore_eos=True)["choices"][0]["message"]
        return message["generation_token_ids"], message["generation_log_probs"]

    first, again, other = ids(7), ids(7), ids(8)
    assert first[0] == again[0]
    assert first[1] == pytest.approx(again[1], abs=1e-5)
    assert first[0] != other[0]


def test_max_tokens_is_honoured(server):
    body = chat(server, QUESTION, max_tokens=5, seed=0, ignore_eos=True)
    assert len(body["choices"][0]["message"]["generation_token_ids"]) == 5
    assert body["choices"][0]["finish_reason"] == "length"
    body = chat(server, QUESTION, max_completion_tokens=3, seed=0)
    assert len(body["choices"][0]["message"]["generation_token_ids"]) <= 3


def test_stop_token_ids_end_the_generation(server):
    """Greedy decoding with an extra stop id for each token it would write: it stops at the first."""
    free = chat(server, QUESTION, max_tokens=6, temperature=0, ignore_eos=True)["choices"][0]["message"]
    first = free["generation_token_ids"][0]
    stopped = chat(server, QUESTION, max_tokens=6, temperature=0, stop_token_ids=[first])
    assert stopped["choices"][0]["message"]["generation_token_ids"] == [first]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_thinking_off_from_the_request_or_the_responses_metadata(server, tok):
    body = chat(server, QUESTION, max_tokens=4, chat_template_kwargs={"enable_thinking": False})
    prompt = body["choices"][0]["message"]["prompt_token_ids"]
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n<think></think>")
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}  # no reasoning was opened



def test_thinking_budget_forces_the_end_of_reasoning(server, tok):
    """Budget 0 and grace 0: the engine writes newline + </think> first, whatever the model prefers."""
    newline = tok.encode("\n")[-1]
    for extra in ({"thinking_budget": 0, "thinking_grace": 0},
                  {"vllm_xargs": {"thinking_budget": 0, "thinking_budget_grace_period": 0}}):
        body = chat(server, QUESTION, max_tokens=4, seed=0, ignore_eos=True, **extra)
        assert body["choices"][0]["message"]["generation_token_ids"][:2] == [newline, tok.think_end_id]
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 1
    reply = server.post("/v1/responses", json={
        "input": "hi", "max_output_tokens": 4, "metadata": {"chat_template_kwargs": '{"enable_thinking": false}'}})
    assert reply.status_code == 200, reply.text
    output = Response.model_validate(reply.json()).output
    assert tok.decode(output[-1].prompt_token_ids).endswith("<think></think>")


# ------------------------------------------------------------------------------------------ multi-turn


def expected_glue(tok: ChatTokenizer, generation: list[int], rendered_after: str) -> list[int]:
    """Ids after the previous turn's prompt + generation: the rest of its turn (if it did not end it), then
    the new messages and the generation prompt as the template renders them."""
    closed = generation[-1] in tok.eos_ids
    return tok.encode(("\n" if closed else "<|im_end|>\n") + rendered_after)


def test_second_and_third_turns_extend_the_previous_ids_exactly(server, tok):
    engine = server.policy.engine
    spliced_before = engine.spliced_prompts
    first = chat(server, QUESTION, tools=[CHAT_TOOL], max_tokens=16, seed=1)["choices"][0]["message"]
    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18}'}
    history = [*QUESTION, first, tool_result]
    second_body = chat(server, history, tools=[CHAT_TOOL], max_tokens=16, seed=2)
    second = second_body["choices"][0]["message"]
    before = first["prompt_token_ids"] + first["generation_token_ids"]
    assert second["prompt_token_ids"][:len(before)] == before  # token-exact extension, no re-tokenization
    glue = expected_glue(tok, first["generation_token_ids"],
                         "<|im_start|>user\n<tool_response>\n{\"temperature_c\": 18}\n</tool_response>\n"
                         "<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert second["prompt_token_ids"][len(before):] == glue
    # The engine resumed the conversation from its prefix cache instead of prefilling it again.
    assert second_body["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(first["prompt_token_ids"])

    third = chat(server, [*history, second, {"role": "user", "content": "And London?"}],
                 tools=[CHAT_TOOL], max_tokens=8, seed=3)["choices"][0]["message"]
    before = second["prompt_token_ids"] + second["generation_token_ids"]
    assert third["prompt_token_ids"][:len(before)] == before
    glue = expected_glue(tok, second["generation_token_ids"],
                         "<|im_start|>user\nAnd London?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert third["prompt_token_ids"][len(before):] == glue
    assert engine.spliced_prompts == spliced_before + 2


def test_responses_route_carries_the_ids_across_turns(server):
    """What the tool-calling agent does: the previous output items (ids on the last) go back as input."""
    params = {"input": QUESTION, "tools": [RESPONSES_TOOL], "max_output_tokens": 12, "temperature": 0.7}
    first = server.post("/v1/responses", json=params).json()
    last = first["output"][-1]
    assert len(last["generation_token_ids"]) == len(last["generation_log_probs"]) >= 1
    assert all("generation_token_ids" not in item for item in first["output"][:-1])
    follow_up = [*QUESTION, *first["output"], {"type": "function_call_output", "call_id": "c1", "output": "{}"}]
    second = server.post("/v1/responses", json={**params, "input": follow_up}).json()
    before = last["prompt_token_ids"] + last["generation_token_ids"]
    assert second["output"][-1]["prompt_token_ids"][:len(before)] == before


def test_a_template_that_rewrites_history_falls_back_to_retokenizing_with_one_warning(tok, caplog):
    """Direct unit test of prompt building (no model needed): a template whose system block counts the
    messages renders the history differently once a message is added, so the ids cannot be extended."""
    template = "{{ messages | length }}" + tok.chat_template
    engine = NativeEngine(NativeConfig(model="builtin:tiny"), "tiny")
    engine.use_tokenizer(ChatTokenizer(tok.tokenizer, template, special_tokens={"eos_token": "</s>"}), tok.vocab_size)
    turn = {"role": "assistant", "content": "hi", "prompt_token_ids": [1, 2], "generation_token_ids": [3, 11],
            "generation_log_probs": [-1.0, -1.0]}
    request = ChatCompletionRequest(messages=[*QUESTION, turn, {"role": "user", "content": "more"}])
    with caplog.at_level(logging.WARNING, logger="servers.policy.engines.native_prompt"):
        prompt = engine.build_prompt(request)
        engine.build_prompt(request)
    assert not prompt.spliced and prompt.ids[:2] != [1, 2]
    assert prompt.ids == tok.encode(engine.tokenizer.apply_chat_template(request.messages))
    assert engine.retokenized_prompts == 2 and engine.spliced_prompts == 0
    assert len([r for r in caplog.records if "re-tokenized" in r.message]) == 1


async def test_concurrent_requests_are_batched_and_each_gets_its_own_tokens(server):
    engine = server.policy.engine
    requests = [ChatCompletionRequest(messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8, seed=i)
                for i in range(6)]
    completions = await asyncio.gather(*(engine.chat(r) for r in requests))
    for request, completion in zip(requests, completions, strict=True):
        message = completion.choices[0].message
        assert message.prompt_token_ids == engine.build_prompt(request).ids
        assert len(message.generation_token_ids) == len(message.generation_log_probs) >= 1


# ---------------------------------------------------------------------------------- parsing (test double)


class ScriptedRunner:
    """Test double for model.engine.AsyncEngine: answers every request with a fixed generated text."""

    def __init__(self, tok: ChatTokenizer, text: str, end: bool = True) -> None:
        self.tok, self.text, self.end = tok, text, end
        self.requests: list = []

    async def submit(self, request):
        from model.engine import GenerationResult

        self.requests.append(request)
        ids = self.tok.encode(self.text) + ([self.tok.im_end_id] if self.end else [])
        return GenerationResult(request.request_id, request.prompt_token_ids, ids, [-0.5] * len(ids),
                                "stop" if self.end else "length", text=self.text)

    def close(self, timeout: float = 10.0) -> bool:
        return True


def scripted_engine(tok: ChatTokenizer, text: str, **config) -> NativeEngine:
    """A NativeEngine whose model is replaced by a ScriptedRunner (the tokenizer and parsing are real)."""
    engine = NativeEngine(NativeConfig(model="builtin:tiny", **config), "tiny")
    engine.use_tokenizer(tok, tok.vocab_size)
    engine._runner = ScriptedRunner(tok, text)
    return engine


CALL = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"


async def test_tool_calls_become_openai_tool_calls_with_json_arguments(tok):
    engine = scripted_engine(tok, f"The user wants Paris.\n</think>\n{CALL}")
    request = ChatCompletionRequest(messages=QUESTION, tools=[CHAT_TOOL])
    completion = await engine.chat(request)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert choice.message.content is None and choice.message.reasoning_content == "The user wants Paris."
    assert choice.message.generation_token_ids == tok.encode(engine._runner.text) + [tok.im_end_id]
    # Two calls in one turn get distinct ids.
    engine._runner.text = f"</think>{CALL}\n{CALL}"
    calls = (await engine.chat(request)).choices[0].message.tool_calls
    assert len(calls) == 2 and calls[0].id != calls[1].id


def test_a_tool_call_episode_over_the_responses_route_extends_the_ids(tok):
    """The agent's view: reasoning + function_call items (ids on the last), the tool output appended, and the
    next prompt is the previous ids plus the tool response's tokens."""
    policy = PolicyServer("policy", POLICY)
    policy.engine = scripted_engine(tok, f"Paris, so look it up.\n</think>\n{CALL}")
    with TestClient(policy.build_app()) as client:
        params = {"input": QUESTION, "tools": [RESPONSES_TOOL]}
        first = client.post("/v1/responses", json=params).json()
        reasoning, call = first["output"]
        assert reasoning["type"] == "reasoning" and "generation_token_ids" not in reasoning
        assert call["type"] == "function_call" and call["arguments"] == '{"city": "Paris"}'
        assert call["generation_token_ids"][-1] == tok.im_end_id
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"temperature_c": 18}'}
        policy.engine._runner.text = "</think>It is 18 °C in Paris."
        second = client.post("/v1/responses", json={**params, "input": [*QUESTION, *first["output"], output]}).json()
    [answer] = second["output"]
    assert answer["content"][0]["text"] == "It is 18 °C in Paris."
    glue = tok.encode("\n<|im_start|>user\n<tool_response>\n{\"temperature_c\": 18}\n</tool_response>\n"
                      "<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert answer["prompt_token_ids"] == call["prompt_token_ids"] + call["generation_token_ids"] + glue


async def test_unparseable_or_unoffered_tool_calls_stay_text(tok):
    broken = "</think><tool_call>\n<function=get_weather>\nnot a parameter\n</function>\n</tool_call>"
    completion = await scripted_engine(tok, broken).chat(ChatCompletionRequest(messages=QUESTION, tools=[CHAT_TOOL]))
    assert completion.choices[0].finish_reason == "stop" and not completion.choices[0].message.tool_calls
    assert "not a parameter" in completion.choices[0].message.content
    engine = scripted_engine(tok, f"</think>{CALL}")
    for request in (ChatCompletionRequest(messages=QUESTION),
                    ChatCompletionRequest(messages=QUESTION, tools=[CHAT_TOOL], tool_choice="none")):
        message = (await engine.chat(request)).choices[0].message
        assert not message.tool_calls and message.content == CALL
    # tool_choice "none" also keeps the tool list out of the prompt.
    assert "# Tools" not in tok.decode(engine._runner.requests[-1].prompt_token_ids)


async def test_context_overflow_ends_the_episode_with_length(tok):
    engine = scripted_engine(tok, "x", max_len=64)
    completion = await engine.chat(ChatCompletionRequest(messages=[{"role": "user", "content": "word " * 100}]))
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.content == ""
    assert choice.message.generation_token_ids == [] and len(choice.message.prompt_token_ids) > 64
    assert engine._runner.requests == []


async def test_config_defaults_thinking_off_budget_max_tokens_and_no_token_ids(tok):
    engine = scripted_engine(tok, "answer", enable_thinking=False, thinking_budget=50, thinking_grace=9,
                             max_tokens=7, return_token_ids=False)
    message = (await engine.chat(ChatCompletionRequest(messages=QUESTION))).choices[0].message
    assert message.content == "answer" and not message.has_tokens
    [sent] = engine._runner.requests
    assert tok.decode(sent.prompt_token_ids).endswith("<think></think>")
    assert (sent.params.max_tokens, sent.params.thinking_budget, sent.params.thinking_grace) == (7, 50, 9)
    assert set(tok.eos_ids) <= set(sent.params.stop_token_ids)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("body, says", [
    ({"messages": QUESTION, "temperature": -1}, "temperature"),
    ({"messages": QUESTION, "top_p": 0}, "top_p"),
    ({"messages": QUESTION, "top_k": "many"}, "top_k"),
    ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ({"messages": QUESTION, "stop_token_ids": [10**6]}, "stop_token_ids"),
    ({"messages": []}, "messages"),
    ({"messages": [*QUESTION, {"role": "assistant", "content": "x", "prompt_token_ids": [1],
                               "generation_token_ids": [99999], "generation_log_probs": [0.0]}]}, "vocabulary"),
    ({"messages": [*QUESTION, {"role": "assistant", "content": "x", "prompt_token_ids": [1],
                               "generation_token_ids": [2, 3], "generation_log_probs": [0.0]}]}, "aligned"),
    ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, "template"),
    ({"messages": QUESTION, "metadata": {"chat_template_kwargs": "not json"}}, "chat_template_kwargs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text only"),
])
def test_invalid_requests_are_4xx_json_errors(server, body, says):
    reply = server.post("/v1/chat/completions", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    error = reply.json()["error"]
    assert says in error["message"] and error["type"]


def test_a_native_engine_needs_a_model():
    with pytest.raises(ValueError, match="needs `model:`"):
        PolicyServer("policy", {"engine": "native"})


def test_shutdown_stops_the_generation_thread():
    policy = PolicyServer("policy", {**POLICY, "max_batch": 1})
    with TestClient(policy.build_app()):
        thread = policy.engine._runner._thread
        assert thread.is_alive()
    assert policy.engine._runner is None and not thread.is_alive()
    with pytest.raises(EngineError, match="shutting down") as stopped:
        asyncio.run(policy.engine.chat(ChatCompletionRequest(messages=QUESTION)))
    assert stopped.value.status == 503


def test_importing_the_policy_server_and_engine_does_not_import_torch():
    code = ("import sys, servers.policy.server, servers.policy.engines.native; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT).returncode == 0
