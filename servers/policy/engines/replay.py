"""A whole chat completion replayed as a stream of `chat.completion.chunk` dicts, one word per chunk.

What `Engine.chat_stream` does for engines that produce a completion all at once (the scripted engine, a
custom engine with only `chat`): the stream a client gets has the shape of the native engine's. Each choice
opens with `role: "assistant"`, its reasoning and then its content come a word at a time (`reasoning_content`
and `content` deltas that join to the message's text), and its last chunk carries the tool calls (whole),
the token fields and the finish reason; a last chunk with no choices carries `usage`. The first chunk has the
completion's `metadata` (the weights' version).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gym_core.protocol import ChatChoice, ChatCompletionResponse

_WORD = re.compile(r"\s*\S+\s*")  # a word with the spaces around it: joined, the pieces give back the text


def replay_chunks(completion: ChatCompletionResponse) -> Iterator[dict[str, Any]]:
    """The chunks of `completion`, in order (see the module docstring)."""
    head = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model}
    first = True
    for choice in completion.choices:
        for delta in _deltas(choice):
            chunk = {**head, "choices": [{"index": choice.index, "delta": delta, "logprobs": None,
                                          "finish_reason": None}]}
            if first and completion.metadata:
                chunk["metadata"] = completion.metadata
            first = False
            yield chunk
        last = {"index": choice.index, "delta": _last_delta(choice),
                "logprobs": choice.logprobs.model_dump(exclude_none=True) if choice.logprobs else None,
                "finish_reason": choice.finish_reason}
        yield {**head, "choices": [last]}
    usage = completion.usage.model_dump(exclude_none=True) if completion.usage else None
    yield {**head, "choices": [], "usage": usage}


def _deltas(choice: ChatChoice) -> Iterator[dict[str, Any]]:
    """The opening delta, then one per word of the reasoning and of the content."""
    yield {"role": "assistant", "content": ""}
    message = choice.message
    for word in _words(message.reasoning_content or ""):
        yield {"reasoning_content": word}
    content = message.content if isinstance(message.content, str) else "".join(
        part.text or "" for part in message.content or [])
    for word in _words(content):
        yield {"content": word}


def _words(text: str) -> list[str]:
    return _WORD.findall(text) or ([text] if text else [])  # text of spaces only is one piece


def _last_delta(choice: ChatChoice) -> dict[str, Any]:
    """The tool calls (each whole, with its index) and the token fields."""
    message, delta = choice.message, {}
    if message.tool_calls:
        delta["tool_calls"] = [{"index": i, **call.model_dump(exclude_none=True)}
                               for i, call in enumerate(message.tool_calls)]
    if message.has_tokens:
        delta.update(prompt_token_ids=message.prompt_token_ids, generation_token_ids=message.generation_token_ids,
                     generation_log_probs=message.generation_log_probs)
    return delta
