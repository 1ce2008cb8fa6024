"""Adversarial model output, shared by every environment's tests: grading must return a reward, never crash.

`adversarial_responses()` gives Responses `output`s a hostile or broken model could produce: 10,000-digit
numbers, a 1 MB string, deeply nested JSON, lone surrogates (what invalid UTF-8 becomes once decoded with
`surrogateescape`), control characters, unclosed fences and tags, and tool calls whose arguments are all of
those. `assert_verify_survives` runs an environment's `verify` on each, in process (lone surrogates cannot
cross the JSON edge, so the HTTP route would never show them to `verify`), after seeding the session.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from gym_core.protocol import TaskRow, VerifyRequest
from servers.resources import ResourcesServer, Session


def _deep_json(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def _deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


HOSTILE_TEXTS: dict[str, str] = {
    "empty": "",
    "digits_10k": "9" * 10_000,
    "boxed_digits_10k": "\\boxed{" + "9" * 10_000 + "}",
    "one_megabyte": "x" * 1_000_000,
    "one_megabyte_words": "word " * 200_000,
    "deep_json_array": _deep_json(100_000),
    "deep_json_object": _deep_object(50_000),
    "fenced_deep_json": "```json\n" + _deep_object(20_000) + "\n```",
    "unclosed_fence": "```python\n" + "x = 1\n" * 1000,
    "lone_surrogates": "answer \ud800 \udcff \udfff" * 100,
    "invalid_utf8_decoded": b"\xff\xfe\xc3\x28 caf\xe9".decode("utf-8", errors="surrogateescape"),
    "nul_and_controls": "\x00\x01\x1b[31m\x7f" * 1000,
    "unclosed_think": "<think>" + "hmm " * 10_000,
    "many_braces": "}{" * 200_000,
    "huge_exponent": "\\boxed{9^{9^{9^{9^{9}}}}}",
    "json_big_int": '{"answer": ' + "1" * 10_000 + "}",
    "python_bomb": "```python\nx = 10 ** 10 ** 10\n```",
}


def _message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": "call_adversarial", "name": name, "arguments": arguments}


def adversarial_responses(tool_names: list[str] | tuple[str, ...] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, response) pairs: each hostile text as the final answer, and as every tool's call arguments."""
    for label, text in HOSTILE_TEXTS.items():
        yield label, {"output": [_message(text)]}
    for name in tool_names:
        for label, text in HOSTILE_TEXTS.items():
            yield f"{name}:{label}", {"output": [_call(name, text), _message("done")]}
        yield f"{name}:json_string_args", {"output": [_call(name, json.dumps({"x": "y" * 1_000_000}))]}
    yield "no_output", {"output": []}
    yield "reasoning_only", {"output": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "?"}]}]}


def assert_verify_survives(server: ResourcesServer, row: dict[str, Any], low: float = 0.0, high: float = 1.0,
                           tool_names: list[str] | tuple[str, ...] = ()) -> None:
    """`server.verify` returns a reward in [low, high] for every adversarial response to `row`."""
    asyncio.run(_verify_all(server, row, low, high, tool_names))


async def _verify_all(server: ResourcesServer, row: dict[str, Any], low: float, high: float,
                      tool_names: list[str] | tuple[str, ...]) -> None:
    try:
        for label, response in adversarial_responses(tool_names):
            session = Session(f"adversarial-{label}")
            await server.seed(TaskRow.model_validate(row), session)
            result = await server.verify(VerifyRequest.model_validate({**row, "response": response}), session)
            reward = result["reward"] if isinstance(result, dict) else result
            assert isinstance(reward, (int, float)) and low <= reward <= high, (label, result)
    finally:
        await server.shutdown()


def assert_tools_survive(client: Any, tool_names: list[str] | tuple[str, ...]) -> None:
    """Every tool answers hostile arguments (raw bodies, and each hostile text as every string field) below 500.

    `client` is a `fastapi.testclient.TestClient` of the environment, already seeded.
    """
    for name in tool_names:
        for label, text in HOSTILE_TEXTS.items():
            if any(0xD800 <= ord(c) <= 0xDFFF for c in text[:1000]):
                continue  # lone surrogates cannot be sent as JSON at all; `assert_verify_survives` covers them
            for body in (text.encode(), json.dumps({"x": text}).encode(), _every_field(client, name, text)):
                reply = client.post(f"/{name}", content=body, headers={"content-type": "application/json"})
                assert reply.status_code < 500, (name, label, reply.status_code, reply.text[:300])


def _every_field(client: Any, name: str, text: str) -> bytes:
    """A body giving `text` to every argument of the tool, and a 10,000-digit number where it takes numbers."""
    schema = next(t for t in client.get("/tools").json()["tools"] if t["name"] == name)
    properties = schema["parameters"].get("properties", {})
    body = {key: int("9" * 4000) if prop.get("type") in ("integer", "number") else text
            for key, prop in properties.items()}
    return json.dumps(body).encode()
