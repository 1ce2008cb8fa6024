"""A stream of `chat.completion.chunk`s as the Responses API's stream events.

The events come in the order the official `openai` SDK's `client.responses.stream()` accumulates:
`response.created`, `response.in_progress`; reasoning as a reasoning item whose summary text streams
(`response.output_item.added`, `response.reasoning_summary_part.added`, `response.reasoning_summary_text.delta`
..., then the `.done` events); the answer as a message item (`response.output_item.added`,
`response.content_part.added`, `response.output_text.delta` ... with each delta's log-probs, then the `.done`
events); tool calls as function_call items once the generation ends (`response.function_call_arguments.delta`
and `.done`); last `response.completed` (or `response.incomplete` when cut by max_output_tokens) with the whole
Response, exactly `chat_to_response` of the assembled completion, its items carrying the ids they streamed with.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from gym_core.protocol import (
    ChatChoice,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    Response,
    ResponseCreateParams,
    dumps,
    loads,
)
from servers.policy.convert import chat_to_response, content_logprobs


class ResponsesStream:
    """Turns one chat completion's chunks into Responses stream events (dicts); see the module docstring."""

    def __init__(self, params: ResponseCreateParams, model: str) -> None:
        self.params, self.model = params, model
        self.response_id = f"resp_{uuid.uuid4().hex}"
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # the output items opened so far, in output order
        self.reasoning: dict[str, Any] | None = None  # the open reasoning item
        self.message: dict[str, Any] | None = None  # the open message item
        self.reasoning_text, self.text = "", ""
        self.entries: list[Any] = []  # every token's log-prob entry so far (chat form)
        self.sent_entries = 0  # answer log-probs already sent
        self.delta: dict[str, Any] = {}  # the token fields and tool calls of the last chunk
        self.finish_reason: str | None = None

    def start(self, metadata: dict[str, str] | None) -> list[dict[str, Any]]:
        """`response.created` and `response.in_progress`."""
        skeleton = self._response(status="in_progress", output=[], metadata=metadata)
        return [self._event("response.created", response=skeleton),
                self._event("response.in_progress", response=skeleton)]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one chat chunk makes (a chunk with no choices carries the usage and ends nothing)."""
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            self.entries += ((choice.get("logprobs") or {}).get("content") or [])
            if delta.get("reasoning_content"):
                events += self._reason(delta["reasoning_content"])
            if delta.get("content"):
                events += self._answer(delta["content"])
            self.delta.update({k: v for k, v in delta.items() if k not in ("content", "reasoning_content")})
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return events

    def finish(self, usage: dict[str, Any] | None, metadata: dict[str, str] | None) -> list[dict[str, Any]]:
        """Close every item, add the tool calls, and end with the whole Response."""
        final = self._final(usage, metadata)
        opened = {item["type"]: item for item in self.items}  # at most one reasoning and one message stream
        events = []
        for index, item in enumerate(final["output"]):
            streamed = opened.get(item["type"]) if item["type"] in ("reasoning", "message") else None
            if streamed is None:
                events += self._whole(index, item)
                continue
            item["id"] = streamed["id"]
            close = self._close_reasoning if item["type"] == "reasoning" else self._close_message
            events += close(index, item)
        kind = "response.incomplete" if final.get("status") == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=final)]

    # ---- items ----------------------------------------------------------------------------------
    def _reason(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self.reasoning is None:
            self.reasoning = {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": []}
            events += self._open(self.reasoning)
            events.append(self._event("response.reasoning_summary_part.added", item_id=self.reasoning["id"],
                                      output_index=len(self.items) - 1, summary_index=0,
                                      part={"type": "summary_text", "text": ""}))
        self.reasoning_text += text
        return [*events, self._event("response.reasoning_summary_text.delta", item_id=self.reasoning["id"],
                                     output_index=self._index(self.reasoning), summary_index=0, delta=text)]

    def _answer(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self.message is None:
            self.message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
                            "status": "in_progress", "content": []}
            events += self._open(self.message)
            events.append(self._event("response.content_part.added", item_id=self.message["id"],
                                      output_index=len(self.items) - 1, content_index=0,
                                      part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        self.text += text
        logprobs = self._answer_logprobs()
        fresh, self.sent_entries = logprobs[self.sent_entries:], len(logprobs)
        return [*events, self._event("response.output_text.delta", item_id=self.message["id"],
                                     output_index=self._index(self.message), content_index=0, delta=text,
                                     logprobs=fresh)]

    def _open(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.items.append(item)
        return [self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)]

    def _close_reasoning(self, index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
        text = "".join(part.get("text") or "" for part in item.get("summary") or [])
        part = {"type": "summary_text", "text": text}
        return [self._event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                            summary_index=0, text=text),
                self._event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                            summary_index=0, part=part),
                self._event("response.output_item.done", output_index=index, item=item)]

    def _close_message(self, index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
        part = item["content"][0]
        return [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=part["text"], logprobs=part.get("logprobs") or []),
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=index, item=item)]

    def _whole(self, index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An item that did not stream (tool calls, an empty answer): added and done at once."""
        events = [self._event("response.output_item.added", output_index=index, item=item)]
        if item["type"] == "function_call":
            events += [self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                   delta=item["arguments"]),
                       self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   arguments=item["arguments"], name=item["name"])]
        return [*events, self._event("response.output_item.done", output_index=index, item=item)]

    # ---- the whole response ---------------------------------------------------------------------
    def _final(self, usage: dict[str, Any] | None, metadata: dict[str, str] | None) -> dict[str, Any]:
        """`chat_to_response` of the completion the chunks assembled, as a dict."""
        fields = {k: v for k, v in self.delta.items() if k not in ("role",)}
        message = ChatMessage(role="assistant", content=self.text or None,
                              reasoning_content=self.reasoning_text or None, **fields)
        logprobs = ChoiceLogprobs(content=self.entries) if self.entries else None
        completion = ChatCompletionResponse(
            model=self.model, usage=usage, metadata=metadata,
            choices=[ChatChoice(message=message, finish_reason=self.finish_reason, logprobs=logprobs)])
        response = chat_to_response(completion, self.params)
        response.id = self.response_id
        return loads(dumps(response))

    def _answer_logprobs(self) -> list[dict[str, Any]]:
        return content_logprobs(ChoiceLogprobs(content=self.entries), bool(self.reasoning_text))

    def _response(self, **fields: Any) -> dict[str, Any]:
        response = Response(id=self.response_id, model=self.model, tools=self.params.tools,
                            tool_choice=self.params.tool_choice or "auto", **fields)
        return loads(dumps(response))

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, opened in enumerate(self.items) if opened is item)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence, **fields}


async def response_events(chunks: AsyncIterator[dict[str, Any]], first: dict[str, Any],
                          params: ResponseCreateParams, model: str) -> AsyncIterator[dict[str, Any]]:
    """The Responses stream events of a chat chunk stream whose first chunk is `first` (already taken)."""
    stream = ResponsesStream(params, model)
    metadata = {**(params.metadata or {}), **(first.get("metadata") or {})} or None
    for event in stream.start(metadata):
        yield event
    usage = None
    for event in stream.feed(first):
        yield event
    async for chunk in chunks:
        usage = chunk.get("usage") or usage
        metadata = {**(metadata or {}), **(chunk.get("metadata") or {})} or None
        for event in stream.feed(chunk):
            yield event
    for event in stream.finish(usage, metadata):
        yield event
