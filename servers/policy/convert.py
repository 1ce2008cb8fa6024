"""Responses API <-> chat completions: the one place the two conversation shapes are converted.

Engines speak chat completions; agents speak the Responses API (as NeMo Gym's do). Token fields ride on the
last item of each model call in Responses form and on the assistant message in chat form, and are carried
across unchanged both ways so a multi-turn prompt can be extended instead of re-tokenized.
"""

from __future__ import annotations

import uuid
from typing import Any

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

# Keys of a Responses create body that are handled here rather than passed through to the engine.
_HANDLED = {"input", "instructions", "tools", "tool_choice", "max_output_tokens", "metadata", "stream",
            "temperature", "top_p", "model", "parallel_tool_calls"}


class ConversionError(ValueError):
    """An input the chat form cannot express (the caller answers 422 with this message)."""


def responses_to_chat(params: ResponseCreateParams) -> ChatCompletionRequest:
    """A Responses create body as a chat-completions request."""
    messages: list[ChatMessage] = []
    if params.instructions:
        messages.append(ChatMessage(role="system", content=params.instructions))
    messages.extend(_items_to_messages(params.items))
    extra = {k: v for k, v in (params.model_extra or {}).items() if k not in _HANDLED}
    # NeMo Gym convention: metadata values are strings; extra_body / chat_template_kwargs hold JSON objects.
    metadata = params.metadata or {}
    if "extra_body" in metadata:
        extra.update(loads(metadata["extra_body"]))
    if "chat_template_kwargs" in metadata:
        extra["chat_template_kwargs"] = loads(metadata["chat_template_kwargs"])
    fields = {
        "model": params.model,
        "tools": [_chat_tool(t) for t in params.tools] or None,
        "tool_choice": _chat_tool_choice(params.tool_choice),
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_output_tokens,
    }
    # Unset stays unset, so an upstream applies its own defaults instead of receiving nulls.
    return ChatCompletionRequest(messages=messages, **{k: v for k, v in fields.items() if v is not None}, **extra)


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
        output.append(Message.assistant(text))
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
