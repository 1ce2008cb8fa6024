"""The openai engine in front of a vLLM upstream: /v1/completions, /tokenize, and training token fields.

The upstream is `vllm_double`, a test double answering in vLLM's shapes (chat and legacy completions with
`return_token_ids` and `return_tokens_as_token_ids`, `/tokenize` at the server root). Its "tokenizer" is
UTF-8 bytes, so every expected id can be written down.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gym_core.client import get_client
from servers.policy.server import PolicyServer

REPLY = "sunny"
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def byte_ids(text: str) -> list[int]:
    return list(text.encode())


def prompt_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return body["prompt"] if isinstance(body["prompt"], str) else bytes(body["prompt"]).decode()
    generation_prompt = "|gen" if body.get("add_generation_prompt", True) else ""
    return "".join(m["content"] or "" for m in body["messages"]) + generation_prompt


def vllm_double(seen: list[dict[str, Any]], *, inline_prompt_ids: bool = True, logprobs: bool = True) -> FastAPI:
    """A vLLM-shaped upstream; `inline_prompt_ids=False` is a vLLM too old to return them, `logprobs=False`
    an upstream that ignores the log-prob keys (not vLLM)."""
    app = FastAPI()
    generation, log_probs = byte_ids(REPLY), [-0.5 - i / 10 for i in range(len(REPLY))]

    def token(i: int, body: dict[str, Any]) -> str:
        return f"token_id:{i}" if body.get("return_tokens_as_token_ids") else chr(i)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        seen.append({"path": "/v1/chat/completions", "body": body})
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": REPLY}}
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
        if body.get("logprobs") and logprobs:
            choice["logprobs"] = {"content": [{"token": token(i, body), "logprob": lp, "bytes": [i], "top_logprobs": []}
                                              for i, lp in zip(generation, log_probs)]}
        if body.get("return_token_ids") and logprobs:
            choice["token_ids"] = generation
            reply["prompt_token_ids"] = byte_ids(prompt_text(body)) if inline_prompt_ids else None
        return reply

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        seen.append({"path": "/v1/completions", "body": body})
        choice: dict[str, Any] = {"index": 0, "text": REPLY, "finish_reason": "length", "logprobs": None}
        if body.get("logprobs") is not None:
            choice["logprobs"] = {"tokens": [token(i, body) for i in generation], "token_logprobs": log_probs,
                                  "top_logprobs": [{} for _ in generation], "text_offset": list(range(5))}
        if body.get("return_token_ids"):
            choice["token_ids"] = generation
            choice["prompt_token_ids"] = byte_ids(prompt_text(body)) if inline_prompt_ids else None
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}

    @app.post("/tokenize")  # at the root, as vLLM serves it
    async def tokenize(request: Request) -> dict:
        body = await request.json()
        seen.append({"path": "/tokenize", "body": body})
        tokens = byte_ids(prompt_text(body))
        return {"count": len(tokens), "max_model_len": 4096, "tokens": tokens, "token_strs": None}

    @app.post("/v1/tokenize")
    async def not_here() -> JSONResponse:
        return JSONResponse({"error": "vLLM has no /v1/tokenize"}, status_code=404)

    return app


async def policy_over(serve, seen: list, training: bool = True, **double: bool) -> str:
    upstream = await serve(vllm_double(seen, **double)) + "/v1"
    config = {"engine": "openai", "base_url": upstream, "model": "served", "return_token_ids": training}
    return await serve(PolicyServer("policy", config).build_app())


async def post(policy: str, path: str, body: dict) -> dict:
    reply = await get_client().post(policy, path, body)
    assert reply.status_code == 200, reply.text
    return reply.json()


# ------------------------------------------------------------------------------------------- training


async def test_training_chat_asks_vllm_for_ids_and_puts_the_token_fields_on_the_message(serve):
    seen: list = []
    policy = await policy_over(serve, seen)
    body = await post(policy, "/v1/chat/completions", {"messages": QUESTION, "tools": [TOOL]})
    sent = seen[-1]["body"]
    assert (sent["logprobs"], sent["top_logprobs"], sent["return_tokens_as_token_ids"], sent["return_token_ids"]) \
        == (True, 0, True, True)
    message = body["choices"][0]["message"]
    assert message["prompt_token_ids"] == byte_ids("Weather in Paris?|gen")
    assert message["generation_token_ids"] == byte_ids(REPLY)
    assert message["generation_log_probs"] == [-0.5, -0.6, -0.7, -0.8, -0.9]
    # vLLM's own copies are dropped: the ids cross the wire once.
    assert "prompt_token_ids" not in body and "token_ids" not in body["choices"][0]
    assert body["choices"][0].get("logprobs") is None
    asked = await post(policy, "/v1/chat/completions", {"messages": QUESTION, "logprobs": True})
    assert asked["choices"][0]["logprobs"]["content"][0]["token"] == f"token_id:{ord('s')}"  # the client asked
    # Agents on /v1/responses get the fields on the last output item.
    response = await post(policy, "/v1/responses", {"input": "Weather in Paris?"})
    assert response["output"][-1]["generation_token_ids"] == byte_ids(REPLY)


async def test_prompt_ids_come_from_the_upstreams_root_tokenize_when_not_inline(serve):
    seen: list = []
    policy = await policy_over(serve, seen, inline_prompt_ids=False)
    body = {"messages": QUESTION, "tools": [TOOL], "chat_template_kwargs": {"enable_thinking": False}}
    message = (await post(policy, "/v1/chat/completions", body))["choices"][0]["message"]
    assert message["prompt_token_ids"] == byte_ids("Weather in Paris?|gen")
    tokenize = seen[-1]
    assert tokenize["path"] == "/tokenize"
    assert tokenize["body"]["tools"] == [TOOL] and tokenize["body"]["model"] == "served"
    assert tokenize["body"]["chat_template_kwargs"] == {"enable_thinking": False}


async def test_an_upstream_without_log_probs_is_a_clear_502(serve):
    policy = await policy_over(serve, [], logprobs=False)
    reply = await get_client().post(policy, "/v1/chat/completions", {"messages": QUESTION})
    assert reply.status_code == 502
    assert "needs a vLLM upstream" in reply.json()["error"]["message"]


async def test_an_upstream_that_sends_the_token_fields_itself_keeps_them(serve):
    """Training through another gym policy server (here a scripted one with fake ids): no logprobs needed."""
    gym = await serve(PolicyServer("inner", {"engine": "scripted", "token_ids": True}).build_app())
    outer = await serve(PolicyServer("policy", {"engine": "openai", "base_url": gym + "/v1",
                                                "return_token_ids": True}).build_app())
    message = (await post(outer, "/v1/chat/completions", {"messages": QUESTION}))["choices"][0]["message"]
    assert bytes(message["prompt_token_ids"]).decode().startswith("<|user|>Weather in Paris?")
    assert bytes(message["generation_token_ids"]).decode() == f"{message['content']}<|end|>"
    assert message["generation_log_probs"] == [0.0] * len(message["generation_token_ids"])


async def test_training_completions_carry_the_token_fields_on_the_choice(serve):
    seen: list = []
    policy = await policy_over(serve, seen)
    body = await post(policy, "/v1/completions", {"prompt": "It is", "max_tokens": 5, "seed": 1})
    sent = seen[-1]["body"]
    assert (sent["logprobs"], sent["return_tokens_as_token_ids"], sent["return_token_ids"]) == (0, True, True)
    assert (sent["prompt"], sent["max_tokens"], sent["seed"], sent["model"]) == ("It is", 5, 1, "served")
    choice = body["choices"][0]
    assert choice["text"] == REPLY and choice["prompt_token_ids"] == byte_ids("It is")
    assert choice["generation_token_ids"] == byte_ids(REPLY) and len(choice["generation_log_probs"]) == 5
    assert "token_ids" not in choice and choice.get("logprobs") is None
    # Token-id prompts and an upstream without inline prompt ids: the prompt is its own ids, no /tokenize.
    policy = await policy_over(serve, seen, inline_prompt_ids=False)
    choice = (await post(policy, "/v1/completions", {"prompt": [73, 116], "logprobs": 0}))["choices"][0]
    assert choice["prompt_token_ids"] == [73, 116] and seen[-1]["path"] == "/v1/completions"
    assert choice["logprobs"]["token_logprobs"] == choice["generation_log_probs"]  # kept: the client asked
    text = (await post(policy, "/v1/completions", {"prompt": "It is"}))["choices"][0]
    assert text["prompt_token_ids"] == byte_ids("It is") and seen[-1]["path"] == "/tokenize"


# ---------------------------------------------------------------------------------------- passthrough


async def test_completions_and_tokenize_are_forwarded_outside_training(serve):
    seen: list = []
    policy = await policy_over(serve, seen, training=False)
    body = await post(policy, "/v1/completions", {"prompt": "It is", "stop": ["\n"], "top_k": 3})
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == REPLY
    assert "generation_token_ids" not in body["choices"][0]
    assert seen[-1]["body"] == {"prompt": "It is", "stop": ["\n"], "top_k": 3, "model": "served"}
    # A client asking vLLM for its own ids gets them, the prompt's lifted to the top level.
    own = await post(policy, "/v1/completions", {"prompt": "It is", "return_token_ids": True})
    assert own["prompt_token_ids"] == byte_ids("It is") and own["choices"][0]["token_ids"] == byte_ids(REPLY)
    turn = {"role": "assistant", "content": "x", "prompt_token_ids": [1], "generation_token_ids": [2],
            "generation_log_probs": [-0.1]}
    tokens = await post(policy, "/tokenize", {"messages": [*QUESTION, turn], "add_generation_prompt": False})
    assert tokens == {"count": 18, "max_model_len": 4096, "tokens": byte_ids("Weather in Paris?x"),
                      "token_strs": None}
    assert seen[-1]["path"] == "/tokenize" and "generation_token_ids" not in seen[-1]["body"]["messages"][1]
    plain = await post(policy, "/tokenize", {"prompt": "hi"})
    assert plain["tokens"] == [104, 105]
