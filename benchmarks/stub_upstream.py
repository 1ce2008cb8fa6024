"""A minimal OpenAI-compatible upstream for benchmarks: answers as vLLM would, at almost no CPU cost.

`POST /v1/chat/completions`: while fewer than `--tool-calls` tool results follow the last user message and
tools are offered, it calls the first tool with arguments read off the user's text (a capitalized name for
string parameters); then it answers in text with the last tool result. Asked for `logprobs` with
`return_tokens_as_token_ids` (the policy server's training mode), it returns vLLM's token shapes: each
generated token as "token_id:<int>" with a log-prob, and `prompt_token_ids` when `return_token_ids` is set
(fake ids: the bytes of the text). `stream: true` answers in SSE chunks, usage in the last one when
`stream_options.include_usage` is set. `POST /v1/completions` continues any prompt with the same few words (token
shapes likewise), `POST /tokenize` (at the root, as in vLLM) returns the bytes of the prompt or the messages' JSON,
and `GET /health` and `GET /v1/models` answer too.

    python benchmarks/stub_upstream.py --port 8000 --tool-calls 3

`start_stub(tool_calls=1)` runs it as a separate process (a free port) for a benchmark or a test and stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

_NAME = re.compile(r"\b(?:in|for|at|of|about)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")
_CAPITALIZED = re.compile(r"(?<=\s)([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content or ""


def _arguments(tool: dict[str, Any], user_text: str) -> dict[str, Any]:
    """A value for every string parameter: the name after "in/for/at/..." in the user's text, else the last one."""
    names = _NAME.findall(user_text) or _CAPITALIZED.findall(user_text) or ["Paris"]
    properties = (tool.get("function", {}).get("parameters") or {}).get("properties", {})
    return {name: names[-1] if schema.get("type") == "string" else 1 for name, schema in properties.items()}


def reply_message(body: dict[str, Any], tool_calls: int) -> dict[str, Any]:
    """The assistant message for a chat request: a tool call while calls are due, else a text answer."""
    messages = body.get("messages") or []
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    results = [m for m in messages[last_user + 1:] if m.get("role") == "tool"]
    tools = body.get("tools") or []
    if tools and len(results) < tool_calls:
        user_text = _text(messages[last_user].get("content")) if last_user >= 0 else ""
        arguments = orjson.dumps(_arguments(tools[0], user_text)).decode()
        call = {"id": f"call_{time.monotonic_ns():x}", "type": "function",
                "function": {"name": tools[0]["function"]["name"], "arguments": arguments}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    answer = f"The answer: {_text(results[-1].get('content'))}" if results else "Hello from the stub upstream."
    return {"role": "assistant", "content": answer}


def completion(body: dict[str, Any], tool_calls: int) -> dict[str, Any]:
    """A whole chat completion in vLLM's shape (token fields when the request asks as a trainer does)."""
    message = reply_message(body, tool_calls)
    generated = (message["content"] or orjson.dumps(message.get("tool_calls")).decode()).encode()
    prompt_words = sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [])
    choice: dict[str, Any] = {"index": 0, "message": message,
                              "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}
    reply: dict[str, Any] = {
        "id": f"chatcmpl-{time.monotonic_ns():x}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model") or "stub", "choices": [choice],
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(generated),
                  "total_tokens": prompt_words + len(generated)},
    }
    if body.get("logprobs") and body.get("return_tokens_as_token_ids"):
        choice["logprobs"] = {"content": [{"token": f"token_id:{b}", "logprob": -0.5, "bytes": [b],
                                           "top_logprobs": []} for b in generated]}
    if body.get("return_token_ids"):
        reply["prompt_token_ids"] = list(orjson.dumps(body.get("messages")))[:prompt_words + 1]
        choice["token_ids"] = list(generated)
    return reply


def text_completion(body: dict[str, Any]) -> dict[str, Any]:
    """A legacy completion in vLLM's shape: a fixed continuation (token fields when asked, as for chat)."""
    generated = b" sunny today."
    prompt = body.get("prompt")
    prompt_ids = list(prompt) if isinstance(prompt, list) else list((prompt or "").encode())
    choice: dict[str, Any] = {"index": 0, "text": generated.decode(), "finish_reason": "stop", "logprobs": None}
    if body.get("logprobs") is not None:
        prefix = "token_id:" if body.get("return_tokens_as_token_ids") else ""
        choice["logprobs"] = {"tokens": [f"{prefix}{b}" for b in generated], "token_logprobs": [-0.5] * len(generated),
                              "top_logprobs": None, "text_offset": list(range(len(generated)))}
    if body.get("return_token_ids"):
        choice["prompt_token_ids"], choice["token_ids"] = prompt_ids, list(generated)
    return {"id": f"cmpl-{time.monotonic_ns():x}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model") or "stub", "choices": [choice],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(generated),
                      "total_tokens": len(prompt_ids) + len(generated)}}


def _chunk(reply: dict[str, Any], delta: dict[str, Any], finish: str | None) -> bytes:
    chunk = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
             "model": reply["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _stream(request: web.Request, body: dict[str, Any], reply: dict[str, Any]) -> web.StreamResponse:
    stream = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await stream.prepare(request)
    message = reply["choices"][0]["message"]
    await stream.write(_chunk(reply, {"role": "assistant", "content": ""}, None))
    if message.get("tool_calls"):
        calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        await stream.write(_chunk(reply, {"tool_calls": calls}, None))
    else:
        for word in re.findall(r"\S+\s*", message["content"]):
            await stream.write(_chunk(reply, {"content": word}, None))
    await stream.write(_chunk(reply, {}, reply["choices"][0]["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk",
                                                                      "choices": [], "usage": reply["usage"]}
        await stream.write(b"data: " + orjson.dumps(usage) + b"\n\n")
    await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()
    return stream


def build_app(tool_calls: int) -> web.Application:
    """The stub's routes."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        reply = completion(body, tool_calls)
        if body.get("stream"):
            return await _stream(request, body, reply)
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def completions(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(text_completion(orjson.loads(await request.read()))),
                            content_type="application/json")

    async def tokenize(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        text = body["prompt"] if "prompt" in body else orjson.dumps(body.get("messages")).decode()
        tokens = list(text.encode())
        return web.json_response({"count": len(tokens), "max_model_len": 1 << 20, "tokens": tokens})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/tokenize", tokenize)  # at the root, as vLLM serves it
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    return app


@contextlib.contextmanager
def start_stub(tool_calls: int = 1, timeout_s: float = 20.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run the stub in its own process on a free port; yields (process, base URL ending in /v1); always stops it."""
    process = subprocess.Popen([sys.executable, __file__, "--port", "0", "--tool-calls", str(tool_calls)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = ""
        while not line.startswith("listening on ") and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the stub upstream did not start (exit code {process.poll()})")
        yield process, line.split()[-1].rstrip("/") + "/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--tool-calls", type=int, default=1, help="tool calls before the final answer")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build_app(args.tool_calls), sock=sock, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
