"""Responses API <-> chat completions: the one place the two conversation shapes are converted.

Engines speak chat completions; agents speak the Responses API (as NeMo Gym's do). Token fields ride on the
last item of each model call in Responses form and on the assistant message in chat form, and are carried
across unchanged both ways so a multi-turn prompt can be extended instead of re-tokenized.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError

from gym_core.protocol import (
    TOKEN_FIELDS,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatFunction,
    ChatFunctionCall,
    ChatMessage,
    ChatTool,
    ChatToolCall,
    ChatUsage,
    ChoiceLogprobs,
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    FunctionTool,
    Message,
    Reasoning,
    Response,
    ResponseCreateParams,
    ResponseUsage,
    dumps,
    loads,
)
from gym_core.server import describe_validation_error

# Keys of a Responses create body that are handled here rather than passed through to the engine.
_HANDLED = {"input", "instructions", "tools", "tool_choice", "max_output_tokens", "metadata", "stream",
            "temperature", "top_p", "model", "parallel_tool_calls", "top_logprobs", "include", "text", "reasoning",
            "stream_options"}
# Responses keys asking for state this server does not keep, and what to send instead (422 naming them).
_REFUSED = {
    "previous_response_id": "this server stores no responses; send the whole conversation as input",
    "conversation": "this server stores no conversations; send the whole conversation as input",
    "background": "responses run in the foreground only; leave it out or send false",
    "n": "the Responses API has no n; use /v1/chat/completions for several samples",
}
_LOGPROBS_INCLUDE = "message.output_text.logprobs"
THINK_END = "</think>"  # where reasoning ends in a generation's tokens (Nemotron 3, Qwen3, DeepSeek-R1 style)


class ConversionError(ValueError):
    """An input the chat form cannot express (the caller answers 422 with this message)."""


def responses_to_chat(params: ResponseCreateParams) -> ChatCompletionRequest:
    """A Responses create body as a chat-completions request."""
    messages: list[ChatMessage] = []
    if params.instructions:
        messages.append(ChatMessage(role="system", content=params.instructions))
    messages.extend(_items_to_messages(params.items))
    given = params.model_extra or {}
    refused = [f"{key} ({why})" for key, why in _REFUSED.items() if given.get(key) not in (None, False)]
    if refused:
        raise ConversionError("cannot honour " + "; ".join(refused))
    extra = {k: v for k, v in given.items() if k not in _HANDLED}
    extra.update(_chat_options(given))
    # NeMo Gym convention: metadata values are strings; extra_body / chat_template_kwargs hold JSON objects.
    metadata = params.metadata or {}
    if "extra_body" in metadata:
        extra.update(_metadata_object(metadata, "extra_body"))
    if "chat_template_kwargs" in metadata:
        extra["chat_template_kwargs"] = _metadata_object(metadata, "chat_template_kwargs")
    fields = {
        "model": params.model,
        "tools": [_chat_tool(t) for t in params.tools] or None,
        "tool_choice": _chat_tool_choice(params.tool_choice),
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_output_tokens,
        "parallel_tool_calls": params.parallel_tool_calls,
    }
    # Unset stays unset, so an upstream applies its own defaults instead of receiving nulls.
    fields = {k: v for k, v in fields.items() if v is not None}
    clash = sorted(({"messages"} | fields.keys()) & extra.keys())
    if clash:
        raise ConversionError(f"{', '.join(clash)} may not be set by metadata.extra_body or an extra key: the "
                              "Responses body's own fields (input, tools, temperature, ...) set them")
    try:
        return ChatCompletionRequest(messages=messages, **fields, **extra)
    except ValidationError as exc:
        raise ConversionError(f"metadata.extra_body: {describe_validation_error(exc)}") from None


def _metadata_object(metadata: dict[str, str], key: str) -> dict[str, Any]:
    """A metadata value that must hold a JSON object (NeMo Gym's convention); anything else is a 422."""
    try:
        value = loads(metadata[key])
    except ValueError as exc:
        raise ConversionError(f"metadata.{key} must be a JSON object as a string; it is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"metadata.{key} must be a JSON object as a string, not a JSON {type(value).__name__}")
    return value


def _chat_options(given: dict[str, Any]) -> dict[str, Any]:
    """Responses options in their chat-completions spelling: log-probs, output format, reasoning effort."""
    options: dict[str, Any] = {}
    top = given.get("top_logprobs")
    if top is not None or _LOGPROBS_INCLUDE in (given.get("include") or ()):
        options.update(logprobs=True, top_logprobs=top or 0)
    text_format = (given.get("text") or {}).get("format")
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        schema = {k: v for k, v in text_format.items() if k != "type"}
        options["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(text_format, dict) and text_format.get("type") not in (None, "text"):
        options["response_format"] = {"type": text_format["type"]}
    effort = (given.get("reasoning") or {}).get("effort")
    if effort is not None:
        options["reasoning_effort"] = effort
    if given.get("stream_options") is not None:
        options["stream_options"] = given["stream_options"]
    return options


def chat_to_response(chat: ChatCompletionResponse, params: ResponseCreateParams) -> Response:
    """A chat completion (one choice) as a Responses object; token fields go on the last output item."""
    choice = chat.choices[0]
    msg = choice.message
    output: list[Any] = []
    if msg.reasoning_content:
        output.append(Reasoning(id=f"rs_{uuid.uuid4().hex}",
                                summary=[ContentPart(type="summary_text", text=msg.reasoning_content)]))
    text = _text(msg.content)
    if text or not (msg.tool_calls or msg.reasoning_content):  # reasoning alone is not an answer yet
        message = Message.assistant(text)
        if choice.logprobs is not None:
            message.content[0].logprobs = content_logprobs(choice.logprobs, msg.reasoning_content is not None)
        output.append(message)
    for call in msg.tool_calls or []:
        output.append(FunctionCall(id=f"fc_{uuid.uuid4().hex}", call_id=call.id, name=call.function.name,
                                   arguments=call.function.arguments, status="completed"))
    if msg.has_tokens:
        for name in TOKEN_FIELDS:
            setattr(output[-1], name, getattr(msg, name))
    incomplete = choice.finish_reason == "length"
    return Response(
        model=chat.model or params.model or "",
        output=output,
        status="incomplete" if incomplete else "completed",
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        usage=_response_usage(chat.usage) if chat.usage else None,
        tools=params.tools,
        tool_choice=params.tool_choice or "auto",
        parallel_tool_calls=params.parallel_tool_calls if params.parallel_tool_calls is not None else True,
        # The request's metadata is echoed (as OpenAI does), plus the engine's (model_version).
        metadata={**(params.metadata or {}), **(chat.metadata or {})} or None,
    )


def content_logprobs(logprobs: ChoiceLogprobs, had_reasoning: bool) -> list[dict[str, Any]]:
    """A chat choice's per-token log-probs as an output_text part's `logprobs`: the tokens after the reasoning.

    Responses' `Logprob` requires `bytes`, so entries without them get the token's UTF-8 bytes.
    """
    entries = logprobs.content or []
    end = next((i for i, e in enumerate(entries) if e.token == THINK_END), None)
    if end is not None:
        entries = entries[end + 1:]
    elif had_reasoning:  # reasoning that never closed: no answer tokens
        entries = []
    out = []
    for entry in entries:
        item = _with_bytes(entry.model_dump(exclude_unset=True))
        item["top_logprobs"] = [_with_bytes(t) for t in item.get("top_logprobs") or []]
        out.append(item)
    return out


def _with_bytes(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("bytes") is None:
        entry["bytes"] = list(entry["token"].encode())
    return entry


def _response_usage(usage: ChatUsage) -> ResponseUsage:
    """Chat usage in Responses form; the cached and reasoning counts are 0 when the engine gave none."""
    details = usage.model_extra or {}
    cached = (details.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (details.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                         total_tokens=usage.total_tokens, input_tokens_details={"cached_tokens": cached},
                         output_tokens_details={"reasoning_tokens": reasoning})


def _items_to_messages(items: list[Any]) -> list[ChatMessage]:
    """Input items as chat messages; one model call's reasoning/message/function_call items merge into one."""
    messages: list[ChatMessage] = []
    turn: ChatMessage | None = None  # the assistant message being assembled from consecutive model items
    for item in items:
        if isinstance(item, FunctionCallOutput):
            output = item.output if isinstance(item.output, str) else dumps(item.output).decode()
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=output))
            turn = None
        elif isinstance(item, Message) and item.role != "assistant":
            messages.append(ChatMessage(role=item.role, content=_chat_content(item.content)))
            turn = None
        elif isinstance(item, (Message, Reasoning, FunctionCall)):
            if turn is None:
                turn = ChatMessage(role="assistant")
                messages.append(turn)
            _add_to_turn(turn, item)
            if item.has_tokens:  # the last item of a model call: the next item starts a new call
                turn = None
        else:
            raise ConversionError(f"input item of type {item.type!r} is not supported by this policy server")
    return messages


def _add_to_turn(turn: ChatMessage, item: Message | Reasoning | FunctionCall) -> None:
    """Fold one model-produced item into an assistant chat message."""
    if isinstance(item, Message):
        turn.content = (_text(turn.content) or "") + item.text
    elif isinstance(item, Reasoning):
        parts = item.content or item.summary
        turn.reasoning_content = (turn.reasoning_content or "") + "".join(p.text or "" for p in parts)
    else:
        call = ChatToolCall(id=item.call_id, function=ChatFunctionCall(name=item.name, arguments=item.arguments))
        turn.tool_calls = [*(turn.tool_calls or []), call]
    if item.has_tokens:  # copied from a validated item, so the three stay consistent
        for name in TOKEN_FIELDS:
            setattr(turn, name, getattr(item, name))


def _chat_content(content: str | list[ContentPart]) -> str | list[ContentPart]:
    """Message content for chat: text parts joined into a string; images become image_url parts."""
    if isinstance(content, str):
        return content
    if all(part.type in ("input_text", "output_text", "text") for part in content):
        return "".join(part.text or "" for part in content)
    parts = []
    for part in content:
        if part.type == "input_image":
            parts.append(ContentPart(type="image_url", image_url={"url": getattr(part, "image_url", None)}))
        else:
            parts.append(ContentPart(type="text", text=part.text or ""))
    return parts


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content)


def _chat_tool(tool: Any) -> ChatTool:
    if not isinstance(tool, FunctionTool):
        raise ConversionError(f"tool of type {tool.type!r} is not supported; only function tools are")
    fields = {"name": tool.name, "description": tool.description, "parameters": tool.parameters,
              "strict": tool.strict}
    return ChatTool(function=ChatFunction(**{k: v for k, v in fields.items() if v is not None}))


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Responses' {"type": "function", "name": n} is chat's {"type": "function", "function": {"name": n}}."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice
