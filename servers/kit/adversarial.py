"""Model output built to break graders: what `gym env test` sends to /verify to show it never crashes.

Each case is an episode's output items. Text cases cover huge numbers, megabyte strings, unbalanced and
deeply nested brackets, decoded invalid UTF-8 and control characters; structural cases cover episodes with no
answer, odd item types and malformed tool calls. `raw_bodies` are request bodies that are not valid JSON
(raw invalid UTF-8, nesting past any parser's limit): the server must refuse them with a 4xx, not crash.
"""

from __future__ import annotations

from typing import Any

from gym_core.protocol import dumps
from servers.kit.harness import assistant_message

BIG_NUMBER = "9" * 10_000
MEGABYTE = 1_000_000


def adversarial_outputs() -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, output items) for every adversarial episode."""
    nested = "[" * 5_000 + "]" * 5_000
    return [
        ("10,000-digit number", [assistant_message(f"The answer is {BIG_NUMBER}. \\boxed{{-{BIG_NUMBER}.5}}")]),
        ("1 MB string", [assistant_message("a" * MEGABYTE)]),
        ("1 MB of numbers", [assistant_message(" ".join(str(i) for i in range(150_000))[:MEGABYTE])]),
        ("unbalanced braces", [assistant_message("\\boxed{\\frac{" * 50_000 + "1")]),
        ("deeply nested JSON text", [assistant_message(nested + ' {"a": ' * 2_000 + "1" + "}" * 2_000)]),
        ("invalid UTF-8, decoded", [assistant_message("caf\ufffd \ufffd\ufffd\x00\x1b[31m \u202e\u200b \ufeff")]),
        ("odd numbers", [assistant_message("1e999999 -0 NaN inf 1/0 0/0 ½ ١٢٣ 0x1F 1_000 ⅓")]),
        ("no output at all", []),
        ("reasoning only", [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm " * 1000}]}]),
        ("malformed tool calls", [
            {"type": "function_call", "call_id": "c1", "name": "no_such_tool", "arguments": "{not json"},
            {"type": "function_call", "call_id": "c2", "name": "x" * 10_000, "arguments": nested},
            {"type": "function_call_output", "call_id": "c1", "output": "\ufffd" * 1_000},
        ]),
        ("odd items and parts", [
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "refusal", "refusal": "no"}, {"type": "output_text", "text": "", "annotations": []},
                {"type": "input_image", "image_url": "data:,"}]},
            {"type": "message", "role": "assistant", "content": "a plain string, not parts"},
        ]),
        ("nested data in an item", [{**assistant_message("42"), "metadata": _nested(100)}]),
    ]


def raw_bodies(row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(label, body) for /verify bodies that are not valid JSON."""
    episode = {**row, "response": {"output": [assistant_message("PLACEHOLDER")]}}
    text = dumps(episode)
    too_deep = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
    return [
        ("raw invalid UTF-8", text.replace(b"PLACEHOLDER", b"caf\xff\xfe \xc3\x28")),
        ("JSON nested 100,000 deep", text.replace(b'"PLACEHOLDER"', too_deep)),
        ("truncated JSON", text[: len(text) // 2]),
    ]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value
