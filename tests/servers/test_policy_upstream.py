"""The openai engine's real-model path: streaming passthrough, reasoning controls, weight updates through vLLM.

Streaming runs against `benchmarks/stub_upstream.py` (a separate process answering as vLLM would) and against
a vLLM-shaped double that streams token ids; weight updates against a recording double of vLLM's
weight-transfer routes (vllm/entrypoints/serve/dev/rlhf/api_router.py), which answers as vLLM does.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gym_core.client import get_client
from gym_core.protocol import ChatCompletionRequest, dumps
from servers.policy.engines.base import EngineError, WeightSource, create_engine
from servers.policy.server import PolicyServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from stub_upstream import start_stub

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def question(text: str = "What is the weather in Paris?", **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": text}], **extra)


@pytest.fixture(scope="module")
def stub():
    with start_stub(tool_calls=1) as (_, base_url):
        yield base_url


# ------------------------------------------------------------------------------------------------- streaming


async def test_stream_passes_the_upstreams_chunks_through_with_usage_last(stub, serve):
    engine = create_engine("openai", {"base_url": stub, "model": "served"}, "policy")
    chunks = [chunk async for chunk in engine.chat_stream(question("Say hello to Ada"))]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) > 1  # incremental: the answer came in pieces
    whole = await engine.chat(question("Say hello to Ada"))
    assert "".join(deltas) == whole.choices[0].message.content
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole.usage.model_dump()  # usage on the last
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    calls = [c async for c in engine.chat_stream(question(tools=[WEATHER]))]
    call = calls[1]["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and call["index"] == 0


async def test_leaving_a_stream_early_and_upstream_errors(stub, serve):
    engine = create_engine("openai", {"base_url": stub}, "policy")
    stream = engine.chat_stream(question("Say hello to Ada"))
    first = await stream.__anext__()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    await stream.aclose()  # the connection is closed, not left half read
    down = create_engine("openai", {"base_url": "http://127.0.0.1:9/v1"}, "policy")
    with pytest.raises(EngineError, match="unreachable") as caught:
        async for _ in down.chat_stream(question()):
            pass
    assert caught.value.status == 502
    rejecting = create_engine("openai", {"base_url": await serve(vllm_double([], status=400)) + "/v1"}, "p")
    with pytest.raises(EngineError, match="answered 400: .*top_k") as caught:
        async for _ in rejecting.chat_stream(question()):
            pass
    assert caught.value.status == 400
    full = create_engine("openai", {"base_url": await serve(vllm_double([], status=413)) + "/v1"}, "p")
    [only] = [c async for c in full.chat_stream(question())]  # context exceeded: one chunk, cut for length
    assert only["choices"][0]["finish_reason"] == "length"


def vllm_double(seen: list[dict[str, Any]], *, status: int = 200) -> FastAPI:
    """vLLM's chat completions, streamed or not, with token ids, reasoning and usage as vLLM sends them.

    `status` 400 rejects every request as vLLM rejects a bad parameter; 413 stands for a prompt longer than the
    context (vLLM answers that with a 400 naming the maximum context length).
    """
    app = FastAPI()
    reasoning, answer = "The user wants weather.", "Sunny."

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        seen.append(body)
        if status == 400:
            return JSONResponse({"error": {"message": "top_k must be -1 or at least 1"}}, status_code=400)
        if status == 413:
            return JSONResponse({"error": {"message": "This model's maximum context length is 4096 tokens"}},
                                status_code=400)
        thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking", True)
        usage = {"prompt_tokens": 7, "completion_tokens": 9 if thinking else 2, "total_tokens": 16 if thinking else 9,
                 "completion_tokens_details": {"reasoning_tokens": 7 if thinking else 0}}
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer, "reasoning": reasoning if thinking else None}
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}]}
        return StreamingResponse(_events(body, reasoning if thinking else "", answer, usage),
                                 media_type="text/event-stream")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        seen.append({"tokenize": await request.json()})
        return {"count": 2, "tokens": [5, 6], "max_model_len": 4096}

    return app


async def _events(body: dict[str, Any], reasoning: str, answer: str, usage: dict[str, Any]):
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
    pieces = [{"reasoning": reasoning}] if reasoning else []
    pieces += [{"content": word} for word in answer.split()]
    for i, delta in enumerate(pieces):
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if body.get("logprobs"):  # the training keys: one token per piece, written "token_id:<int>"
            choice["logprobs"] = {"content": [{"token": f"token_id:{100 + i}", "logprob": -0.25,
                                               "bytes": [], "top_logprobs": []}]}
            choice["token_ids"] = [100 + i]
        chunk = {**head, "choices": [choice]}
        if i == 0 and body.get("return_token_ids"):
            chunk["prompt_token_ids"] = [1, 2, 3]
        yield b"data: " + dumps(chunk) + b"\n\n"
        await asyncio.sleep(0)
    yield b"data: " + dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        yield b"data: " + dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


async def test_streaming_for_training_puts_the_token_fields_on_the_finishing_delta(serve):
    seen: list = []
    base = await serve(vllm_double(seen)) + "/v1"
    engine = create_engine("openai", {"base_url": base, "return_token_ids": True}, "policy")
    chunks = [c async for c in engine.chat_stream(question())]
    sent = seen[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["logprobs"] is True and sent["return_token_ids"] is True
    finishing = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    delta = finishing["choices"][0]["delta"]
    assert delta["prompt_token_ids"] == [1, 2, 3]
    assert delta["generation_token_ids"] == [100, 101] and delta["generation_log_probs"] == [-0.25, -0.25]
    # vLLM's copies are gone from every chunk: the ids cross our wire once.
    assert all("logprobs" not in c["choices"][0] and "token_ids" not in c["choices"][0]
               for c in chunks if c["choices"])
    assert all("prompt_token_ids" not in c for c in chunks)


# ------------------------------------------------------------------------------------------------- reasoning


async def test_reasoning_controls_reach_vllm_as_nvidia_documents_them(serve):
    seen: list = []
    base = await serve(vllm_double(seen)) + "/v1"
    engine = create_engine("openai", {"base_url": base, "thinking_budget": 64}, "policy")
    reply = await engine.chat(question(thinking_budget=16, thinking_grace=4))
    assert seen[-1]["vllm_xargs"] == {"thinking_budget": 16, "thinking_budget_grace_period": 4}
    assert "thinking_budget" not in seen[-1] and "thinking_grace" not in seen[-1]
    message = reply.choices[0].message
    assert message.reasoning_content == "The user wants weather." and message.content == "Sunny."
    assert reply.usage.model_extra["completion_tokens_details"] == {"reasoning_tokens": 7}
    await engine.chat(question())  # the engine's default budget
    assert seen[-1]["vllm_xargs"] == {"thinking_budget": 64}
    off = await engine.chat(question(chat_template_kwargs={"enable_thinking": False}))
    assert seen[-1]["chat_template_kwargs"] == {"enable_thinking": False}
    assert off.choices[0].message.reasoning_content is None
    streamed = [c async for c in engine.chat_stream(question())]
    assert streamed[0]["choices"][0]["delta"] == {"reasoning_content": "The user wants weather."}
    defaults = create_engine("openai", {"base_url": base, "enable_thinking": False}, "policy")
    await defaults.chat(question())
    assert seen[-1]["chat_template_kwargs"] == {"enable_thinking": False} and "vllm_xargs" not in seen[-1]


async def test_reasoning_comes_back_apart_from_content_and_counts_on_both_routes(serve):
    base = await serve(vllm_double([])) + "/v1"
    policy = await serve(PolicyServer("policy", {"engine": "openai", "base_url": base}).build_app())
    client = get_client()
    response = (await client.post(policy, "/v1/responses", {"input": "Weather?"})).json()
    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    assert response["output"][0]["summary"][0]["text"] == "The user wants weather."
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 7}
    chat = (await client.post(policy, "/v1/chat/completions", {"messages": [
        {"role": "user", "content": "Weather?"}], "chat_template_kwargs": {"enable_thinking": False}})).json()
    assert chat["choices"][0]["message"]["content"] == "Sunny." and chat["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0}


# --------------------------------------------------------------------------------------------------- weights


def weight_transfer_double(calls: list[tuple[str, Any]], *, dev_mode: bool = True, fail: str | None = None) -> FastAPI:
    """vLLM's weight-transfer routes (VLLM_SERVER_DEV_MODE=1), recording each call and what the path held."""
    app = FastAPI()

    async def record(request: Request, name: str) -> Any:
        if not dev_mode:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json() if await request.body() else None
        if name == "/update_weights":
            directory = Path(body["update_info"]["path"])
            body = {**body, "files": {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}}
        calls.append((name, body))
        if name == fail:
            return JSONResponse({"error": {"message": "Shared-disk checkpoint path must be a local directory"}},
                                status_code=500)
        return {"message": "ok"}

    def recorder(name: str):
        async def endpoint(request: Request) -> Any:
            return await record(request, name)
        return endpoint

    for route in ("/init_weight_transfer_engine", "/start_weight_update", "/update_weights", "/finish_weight_update"):
        app.add_api_route(route, recorder(route), methods=["POST"])

    @app.post("/pause")
    async def pause(request: Request) -> Any:
        calls.append(("/pause", dict(request.query_params)))
        return {"status": "paused"} if dev_mode else JSONResponse({"detail": "Not Found"}, status_code=404)

    @app.post("/resume")
    async def resume() -> dict:
        calls.append(("/resume", None))
        return {"status": "resumed"}

    return app


async def test_weight_update_drives_vllms_weight_transfer_and_bumps_the_version(serve, tmp_path):
    calls: list = []
    root = await serve(weight_transfer_double(calls))
    engine = create_engine("openai", {"base_url": root + "/v1", "api_key": "sk-1",
                                      "weights_staging_dir": str(tmp_path / "staging")}, "policy")
    checkpoint = tmp_path / "step-1"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights-1")
    assert await engine.update_weights(WeightSource(path=str(checkpoint))) == "1" == engine.model_version
    assert [name for name, _ in calls] == ["/init_weight_transfer_engine", "/pause", "/start_weight_update",
                                           "/update_weights", "/finish_weight_update", "/resume"]
    assert calls[0][1] == {"init_info": {}} and calls[1][1] == {"mode": "keep"}  # frozen, not dropped
    assert calls[3][1] == {"update_info": {"path": str(checkpoint)}, "files": {"model.safetensors": b"weights-1"}}
    assert calls[4][1] == {"weight_version": "1"}
    assert checkpoint.exists()  # the caller's directory is left alone
    calls.clear()
    # Bytes (a trainer on another host) and a single file are staged as a directory vLLM loads, then removed.
    assert await engine.update_weights(WeightSource(data=b"weights-2", version="step-2")) == "step-2"
    assert calls[0][0] == "/pause"  # initialized once
    assert calls[2][1]["files"] == {"model.safetensors": b"weights-2"}
    assert await engine.update_weights(WeightSource(path=str(checkpoint / "model.safetensors"))) == "step-2+1"
    assert calls[-3][1]["files"] == {"model.safetensors": b"weights-1"}
    assert list((tmp_path / "staging").iterdir()) == []


async def test_a_failed_weight_update_resumes_vllm_and_keeps_the_version(serve, tmp_path):
    calls: list = []
    engine = create_engine("openai", {"base_url": await serve(weight_transfer_double(calls, fail="/update_weights"))},
                           "policy")
    with pytest.raises(EngineError, match="answered 500 to /update_weights: Shared-disk") as caught:
        await engine.update_weights(WeightSource(data=b"w"))
    assert caught.value.status == 502 and engine.model_version == "0"
    assert calls[-1] == ("/resume", None)  # generation goes on with the old weights
    with pytest.raises(EngineError, match="does not exist") as missing:
        await engine.update_weights(WeightSource(path=str(tmp_path / "nowhere")))
    assert missing.value.status == 400
    plain = create_engine("openai", {"base_url": await serve(weight_transfer_double([], dev_mode=False))}, "p")
    with pytest.raises(EngineError, match="VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config") as hint:
        await plain.update_weights(WeightSource(data=b"w"))
    assert hint.value.status == 501


async def test_the_weights_route_drives_vllm_and_stamps_the_new_version(serve, tmp_path):
    calls: list = []
    chat = vllm_double([])
    chat.router.routes.extend(weight_transfer_double(calls).router.routes)  # one upstream serving both
    upstream = await serve(chat)
    policy = await serve(PolicyServer("policy", {"engine": "openai", "base_url": upstream + "/v1"}).build_app())
    client = get_client()
    checkpoint = tmp_path / "step-7"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"w7")
    reply = await client.post(policy, "/v1/weights", {"path": str(checkpoint), "version": "step-7"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == "step-7" and reply.headers["x-model-version"] == "step-7"
    assert ("/finish_weight_update", {"weight_version": "step-7"}) in calls
    answer = await client.post(policy, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert answer.headers["x-model-version"] == "step-7"
    uploaded = await client.request("POST", policy, "/v1/weights", content=b"w8",
                                    headers={"content-type": "application/octet-stream"})
    assert uploaded.json()["model_version"] == "step-7+1"
    assert calls[-3][1]["files"] == {"model.safetensors": b"w8"}
    assert (await client.get(policy, "/v1/weights")).json()["model_version"] == "step-7+1"
