"""Parse generated text into reasoning, answer and tool calls (Nemotron 3 / Qwen3-Coder XML, or JSON).

Never raises on model output: text that looks like a tool call but does not parse stays in `content`
and `parse_error` says what was wrong, so the agent can show the model its mistake.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

THINK_START, THINK_END = "<think>", "</think>"
CALL_START, CALL_END = "<tool_call>", "</tool_call>"
# End-of-turn markers an engine may leave at the end of the decoded text.
_END_MARKERS = ("<|im_end|>", "</s>")

_FUNCTION = re.compile(r"<function=([^>\n]*)>(.*?)(?:</function>|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]*)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for."""

    name: str
    arguments: dict[str, Any]

    def arguments_json(self) -> str:
        """The arguments as the JSON string OpenAI-style APIs carry."""
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ParsedGeneration:
    """A generation split into its parts; `parse_error` is set when some tool-call text did not parse."""

    reasoning: str | None
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    parse_error: str | None = None


class ToolCallError(ValueError):
    """A <tool_call> block that could not be read; internal to the parser, never escapes it."""


def parse_generation(text: str, *, thinking: bool = False, tools: list[dict] | None = None) -> ParsedGeneration:
    """Split generated text into reasoning, content and tool calls.

    `thinking=True` means the prompt ended inside an open `<think>` (the thinking generation prompt), so
    text that never reaches `</think>` is all reasoning (a generation cut off while thinking). `tools`
    (OpenAI tool schemas) keeps parameters declared as strings from being JSON-decoded ("42" stays "42").
    """
    text = _strip_end_markers(text)
    reasoning, rest = _split_reasoning(text, thinking)
    content, calls, errors = _extract_tool_calls(rest, _string_params(tools))
    return ParsedGeneration(
        reasoning=reasoning,
        content=content,
        tool_calls=calls,
        parse_error="; ".join(errors) if errors else None,
    )


def _strip_end_markers(text: str) -> str:
    stripped = text.rstrip()
    for marker in _END_MARKERS:
        if stripped.endswith(marker):
            return stripped[: -len(marker)]
    return text


def _split_reasoning(text: str, thinking: bool) -> tuple[str | None, str]:
    """Reasoning is everything before the first `</think>`, with or without its opening `<think>`."""
    end = text.find(THINK_END)
    if end < 0:
        if thinking:
            return _none_if_blank(text.removeprefix(THINK_START)), ""
        if text.lstrip().startswith(THINK_START):
            # Opened but never closed: the generation stopped mid-thought.
            return _none_if_blank(text.lstrip()[len(THINK_START):]), ""
        return None, text
    head = text[:end].lstrip()
    return _none_if_blank(head.removeprefix(THINK_START)), text[end + len(THINK_END):]


def _none_if_blank(text: str) -> str | None:
    return text.strip() or None


def _extract_tool_calls(text: str, string_params: dict[str, set[str]]) -> tuple[str, list[ToolCall], list[str]]:
    """Pull every <tool_call> block out of `text`; blocks that fail to parse stay in the content."""
    content: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    pos = 0
    while (start := text.find(CALL_START, pos)) >= 0:
        content.append(text[pos:start])
        body_start = start + len(CALL_START)
        end = text.find(CALL_END, body_start)
        stop = len(text) if end < 0 else end + len(CALL_END)
        body = text[body_start:] if end < 0 else text[body_start:end]
        try:
            if end < 0 and "</function>" not in body and not body.strip().endswith("}"):
                raise ToolCallError("unclosed <tool_call> (generation ended inside it)")
            calls.append(_parse_block(body, string_params))
        except ToolCallError as error:
            errors.append(f"tool call {len(calls) + len(errors) + 1}: {error}")
            content.append(text[start:stop])
        pos = stop
    content.append(text[pos:])
    return "".join(content).strip(), calls, errors


def _parse_block(body: str, string_params: dict[str, set[str]]) -> ToolCall:
    body = body.strip()
    if CALL_START in body:
        raise ToolCallError("nested <tool_call>")
    if body.startswith("<function="):
        return _parse_xml(body, string_params)
    if body.startswith("{"):
        return _parse_json(body)
    if not body:
        raise ToolCallError("empty <tool_call>")
    raise ToolCallError("expected <function=NAME> or a JSON object inside <tool_call>")


def _parse_xml(body: str, string_params: dict[str, set[str]]) -> ToolCall:
    """`<function=NAME><parameter=ARG>\\nVALUE\\n</parameter>...</function>`; tolerates missing closers."""
    match = _FUNCTION.match(body)
    if match is None:
        raise ToolCallError("malformed <function=...> tag")
    name, params_text = match.group(1).strip(), match.group(2)
    if not name:
        raise ToolCallError("missing function name in <function=...>")
    if body[match.end():].strip():
        raise ToolCallError(f"unexpected text after </function> of {name}")
    keep_strings = string_params.get(name, set())
    arguments: dict[str, Any] = {}
    for arg_name, raw in _PARAMETER.findall(params_text):
        arg_name = arg_name.strip()
        if not arg_name:
            raise ToolCallError(f"missing parameter name in a <parameter=...> of {name}")
        value = raw.removeprefix("\n").removesuffix("\n")
        arguments[arg_name] = value if arg_name in keep_strings else _json_or_string(value)
    leftover = _PARAMETER.sub("", params_text).strip()
    if leftover:
        raise ToolCallError(f"unexpected text in <function={name}>: {leftover[:40]!r}")
    return ToolCall(name=name, arguments=arguments)


def _parse_json(body: str) -> ToolCall:
    """`{"name": ..., "arguments": {...}}`, arguments also accepted as a JSON string or as "parameters"."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as error:
        raise ToolCallError(f"invalid JSON in <tool_call>: {error.msg} at char {error.pos}") from None
    except RecursionError:
        raise ToolCallError("JSON in <tool_call> is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ToolCallError("JSON tool call must be an object")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolCallError('JSON tool call has no "name"')
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            raise ToolCallError(f'"arguments" of {name} is a string but not JSON') from None
    if not isinstance(arguments, dict):
        raise ToolCallError(f'"arguments" of {name} must be an object')
    return ToolCall(name=name.strip(), arguments=arguments)


def _json_or_string(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return value


def _string_params(tools: list[dict] | None) -> dict[str, set[str]]:
    """For each tool, the parameters its schema declares as plain strings."""
    found: dict[str, set[str]] = {}
    for tool in tools or []:
        fn = tool.get("function", tool)
        props = (fn.get("parameters") or {}).get("properties") or {}
        found[fn.get("name", "")] = {k for k, v in props.items() if isinstance(v, dict) and v.get("type") == "string"}
    return found
