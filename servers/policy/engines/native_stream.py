"""Streaming chat completions from the native engine: `chat.completion.chunk` dicts as tokens are sampled.

The engine thread hands each step's tokens over (`AsyncEngine.stream`); they are detokenized incrementally
and split into `reasoning_content` and `content` deltas. Only text that is certain to begin the final parse is
sent: trailing whitespace, anything that may be the start of `</think>`, of a `<tool_call>` (when tools are
offered) or of a stop string waits for the next tokens. When the generation ends, the same parse as a
non-streamed completion (`native_output.chat_choice`) gives the rest of the text, the tool calls (whole, in
the last chunk), the finish reason, and the token fields (on the last choice chunk's delta); a final chunk with
no choices carries `usage` and `metadata.model_version`. Joined, the deltas equal the non-streamed message.

One case cannot be streamed exactly: with reasoning off, text that the model ends with a stray `</think>`
is parsed as reasoning at the end; what was already sent as content stays sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from servers.policy.engines.native_output import THINK_END, TokenPieces, chat_choice, chat_usage, token_logprobs

THINK_START = "<think>"
CALL_START = "<tool_call>"


class IncrementalText:
    """The text of a growing list of token ids, one piece at a time (a byte-level token may end mid-character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to text already returned; decoding from _prefix keeps context
        self._read = 0

    def push(self, ids: list[int]) -> str:
        """Add ids; the new text they complete ("" while a character is still partial)."""
        self.ids.extend(ids)
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""


class ReasoningSplit:
    """Splits the text so far into the reasoning and content that are safe to send (see the module docstring)."""

    def __init__(self, *, thinking: bool, tools: bool, stops: tuple[str, ...]) -> None:
        self.thinking = thinking  # the prompt opened reasoning
        self.holds = (THINK_END, THINK_START, *((CALL_START,) if tools else ()), *stops)
        self.tools, self.stops = tools, stops
        self.text = ""

    def push(self, piece: str) -> tuple[str, str]:
        """Add text; (reasoning, content) safe to have sent so far, each a prefix of its final value."""
        self.text += piece
        text = self.text
        for stop in self.stops:  # the engine ends the text before a stop string, in the step that writes it
            if stop in text:
                text = text[:text.find(stop)]
        end = text.find(THINK_END)
        if end >= 0:
            reasoning = text[:end].lstrip().removeprefix(THINK_START)
            return reasoning.strip(), self._content(text[end + len(THINK_END):])
        if self.thinking:
            return self._settled(text.removeprefix(THINK_START).lstrip()), ""
        opened = text.lstrip()
        if opened.startswith(THINK_START):  # the model opened reasoning itself
            return self._settled(opened[len(THINK_START):].lstrip()), ""
        if THINK_START.startswith(opened):  # it may be about to
            return "", ""
        return "", self._content(text)

    def _content(self, text: str) -> str:
        text = text.lstrip()
        if self.tools and CALL_START in text:
            text = text[:text.find(CALL_START)]
        return self._settled(text)

    def _settled(self, text: str) -> str:
        """`text` without what may still change: trailing whitespace and a partial marker or stop string."""
        cut = len(text)
        for marker in self.holds:
            for size in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:size]):
                    cut = min(cut, len(text) - size)
                    break
        return text[:cut].rstrip()


async def chat_chunks(batches: AsyncIterator[list[Any]], *, request: Any, prompt: Any, pieces: TokenPieces,
                      params: Any, model: str, return_token_ids: bool,
                      parallel_tool_calls: bool) -> AsyncIterator[dict[str, Any]]:
    """`chat.completion.chunk` dicts from an `AsyncEngine.stream` of one generation (see the module docstring)."""
    from model.engine import GenerationResult

    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    text = IncrementalText(pieces.tokenizer)
    split = ReasoningSplit(thinking=prompt.thinking, tools=bool(request.tools) and request.tool_choice != "none",
                           stops=params.stop)
    sent_reasoning, sent_content, first = "", "", True
    async for batch in batches:
        deltas = [item for item in batch if not isinstance(item, GenerationResult)]
        shown = [d for d in deltas if d.token_id not in params.stop_token_ids]
        reasoning, content = split.push(text.push([d.token_id for d in shown]))
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if len(reasoning) > len(sent_reasoning):
            delta["reasoning_content"], sent_reasoning = reasoning[len(sent_reasoning):], reasoning
        if len(content) > len(sent_content):
            delta["content"], sent_content = content[len(sent_content):], content
        entries = _entries(pieces, shown) if request.logprobs else None
        if delta or entries:
            version = (deltas[0] if deltas else batch[-1]).weights_version  # the weights it was admitted under
            yield _chunk(head, delta, entries, metadata={"model_version": version} if first else None)
            first = False
        if isinstance(batch[-1], GenerationResult):
            result = batch[-1]
            choice = chat_choice(0, request, prompt, result, pieces, stop_ids=params.stop_token_ids,
                                 return_token_ids=return_token_ids, parallel_tool_calls=parallel_tool_calls)
            yield _chunk(head, _rest(choice.message, sent_reasoning, sent_content, first), None,
                         finish_reason=choice.finish_reason)
            usage = chat_usage(len(prompt.ids), [result]).model_dump(exclude_none=True)
            yield {**head, "choices": [], "usage": usage, "metadata": {"model_version": result.weights_version}}
            return


def _rest(message: Any, sent_reasoning: str, sent_content: str, first: bool) -> dict[str, Any]:
    """The last delta: the text not sent yet, the tool calls, the token fields."""
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    reasoning, content = message.reasoning_content or "", message.content or ""
    if reasoning.startswith(sent_reasoning) and len(reasoning) > len(sent_reasoning):
        delta["reasoning_content"] = reasoning[len(sent_reasoning):]
    if content.startswith(sent_content) and len(content) > len(sent_content):
        delta["content"] = content[len(sent_content):]
    if message.tool_calls:
        delta["tool_calls"] = [{"index": i, "id": call.id, "type": "function",
                                "function": {"name": call.function.name, "arguments": call.function.arguments}}
                               for i, call in enumerate(message.tool_calls)]
    if message.has_tokens:
        delta.update(prompt_token_ids=message.prompt_token_ids, generation_token_ids=message.generation_token_ids,
                     generation_log_probs=message.generation_log_probs)
    return delta


def _entries(pieces: TokenPieces, deltas: list[Any]) -> list[dict[str, Any]]:
    return token_logprobs(pieces, [d.token_id for d in deltas], [d.logprob for d in deltas],
                          [d.top or [] for d in deltas])


def _chunk(head: dict[str, Any], delta: dict[str, Any], entries: list[dict[str, Any]] | None, *,
           finish_reason: str | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None if entries is None else {"content": entries,
                                                                                    "refusal": None},
              "finish_reason": finish_reason}
    chunk = {**head, "choices": [choice]}
    if metadata is not None:
        chunk["metadata"] = metadata
    return chunk
