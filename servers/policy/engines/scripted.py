"""A scripted, rule-based policy for tests and demos: deterministic, instant, and not a language model.

Rules, applied to the conversation since the last user message:
1. tools offered and none called yet -> call the tool whose name/description best matches the user's words,
   with arguments read off the user's text (strings: the last capitalized phrase; numbers: the first number);
2. a tool has answered -> reply in text built from its result ("city: Paris, temperature_c: 18, ...");
3. otherwise -> reply with a fixed acknowledgement.
By default it produces no token ids. With `token_ids: true` it attaches FAKE but consistent ones, for testing
trajectory plumbing without a model: the UTF-8 bytes of a plain-text rendering of the conversation
(`<|role|>text<|end|>` per message), so each call's prompt ids extend the previous prompt + generation exactly
as a real chat template would, and log-probs of 0.0 (the script is deterministic). Usage counts those bytes
then, whitespace-separated words otherwise.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from gym_core.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatFunction,
    ChatMessage,
    ChatToolCall,
    ChatUsage,
    ContentPart,
    dumps,
    loads,
)
from servers.policy.engines.base import Engine, EngineConfig, EngineError

_PHRASE = re.compile(r"[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[a-z0-9]+")
# Conversations longer than this are answered in a worker thread: the rules are linear, but a few MB of text
# still take long enough to delay every other request on the loop (/health included).
OFF_LOOP_CHARS = 64 * 1024


class ScriptedConfig(EngineConfig):
    """Settings of the scripted engine."""

    token_ids: bool = False  # attach fake-but-consistent byte-level token ids (see the module docstring)


class ScriptedEngine(Engine):
    """The rule-based stand-in for a model (see the module docstring for its rules)."""

    config: ScriptedConfig
    config_model = ScriptedConfig

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Apply the rules to the conversation and return one completion (a long one off the event loop)."""
        if sum(len(_text(m.content)) for m in request.messages) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(self._complete, request)
        return self._complete(request)

    def _complete(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        message = scripted_reply(request)
        if self.config.token_ids:
            prompt = _render_prompt(request).encode()
            generation = _render(message).removeprefix(_GENERATION_PROMPT).encode()
            message.prompt_token_ids, message.generation_token_ids = list(prompt), list(generation)
            message.generation_log_probs = [0.0] * len(generation)
            prompt_count, completion_count = len(prompt), len(generation)
        else:
            prompt_count = sum(len(_text(m.content).split()) for m in request.messages)
            completion_count = len(_text(message.content).split()) + len(message.tool_calls or [])
        return ChatCompletionResponse(
            model=self.model_name,
            choices=[ChatChoice(message=message, finish_reason="tool_calls" if message.tool_calls else "stop")],
            usage=ChatUsage(prompt_tokens=prompt_count, completion_tokens=completion_count,
                            total_tokens=prompt_count + completion_count),
        )


def scripted_reply(request: ChatCompletionRequest) -> ChatMessage:
    """The scripted assistant message for a conversation."""
    last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
    user_text = _text(request.messages[last_user].content) if last_user >= 0 else ""
    since_user = request.messages[last_user + 1:]
    tool_results = [m for m in since_user if m.role == "tool"]
    if tool_results:
        return ChatMessage(role="assistant", content=" ".join(_describe(_text(m.content)) for m in tool_results))
    functions = [t.function for t in request.tools or []]
    if functions and request.tool_choice != "none" and not any(m.tool_calls for m in since_user):
        fn = _pick_tool(functions, user_text)
        arguments = dumps(_arguments(fn, user_text)).decode()
        call = ChatToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function={"name": fn.name, "arguments": arguments})
        return ChatMessage(role="assistant", content=None, tool_calls=[call])
    return ChatMessage(role="assistant", content="I have nothing to look up for that, so I cannot answer it.")


_GENERATION_PROMPT = "<|assistant|>"


def _render(message: ChatMessage) -> str:
    """One message as plain text: what the fake token ids are the bytes of."""
    calls = "".join(dumps({"name": c.function.name, "arguments": c.function.arguments}).decode()
                    for c in message.tool_calls or [])
    return f"<|{message.role}|>{_text(message.content)}{calls}<|end|>"


def _render_prompt(request: ChatCompletionRequest) -> str:
    """The whole prompt as plain text: tools, every message, then the generation prompt."""
    tools = f"<|tools|>{dumps(request.tools).decode()}<|end|>" if request.tools else ""
    return tools + "".join(_render(m) for m in request.messages) + _GENERATION_PROMPT


def _pick_tool(functions: list[ChatFunction], user_text: str) -> ChatFunction:
    """The tool sharing the most words with the user's text (ties: the first offered)."""
    words = set(_WORD.findall(user_text.lower()))

    def overlap(fn: ChatFunction) -> int:
        return len(words & set(_WORD.findall(f"{fn.name.replace('_', ' ')} {fn.description or ''}".lower())))

    return max(functions, key=overlap)


def _arguments(fn: ChatFunction, user_text: str) -> dict[str, Any]:
    """Arguments for `fn` read off the user's text, one per schema property it can fill."""
    properties = _properties(fn)
    phrases = _names(user_text)
    numbers = _NUMBER.findall(user_text)
    lowered = user_text.lower()
    args: dict[str, Any] = {}
    for name, schema in properties.items():
        kind = schema.get("type")
        if "enum" in schema:
            args[name] = next((v for v in schema["enum"] if str(v).lower() in lowered), schema["enum"][0])
        elif kind == "string" and phrases:
            args[name] = phrases[-1]
        elif kind in ("integer", "number") and numbers:
            args[name] = int(float(numbers[0])) if kind == "integer" else float(numbers[0])
        elif kind == "boolean":
            args[name] = "not" not in lowered.split()
        elif "default" in schema:
            args[name] = schema["default"]
    return args


def _properties(fn: ChatFunction) -> dict[str, dict[str, Any]]:
    """The tool's parameter schemas by name; a schema it cannot read is the request's fault (422, field named)."""
    where = f"tools[function={fn.name!r}].parameters"
    properties = (fn.parameters or {}).get("properties", {})
    if not isinstance(properties, dict):
        raise EngineError(f"{where}.properties must be an object mapping names to schemas", 422, "invalid_request")
    for name, schema in properties.items():
        if not isinstance(schema, dict):
            raise EngineError(f"{where}.properties.{name} must be a JSON-schema object, not "
                              f"{type(schema).__name__}", 422, "invalid_request")
        enum = schema.get("enum")
        if "enum" in schema and not (isinstance(enum, list) and enum):
            raise EngineError(f"{where}.properties.{name}.enum must be a non-empty list of values", 422,
                              "invalid_request")
    return properties


# Words after which a capitalized phrase is most likely the name asked about ("weather in Paris").
_PREPOSITION = re.compile(r"\b(?:in|for|at|of|about)\Z")


def _names(text: str) -> list[str]:
    """Capitalized phrases that look like names, best last: those after "in/for/at/of/about" win.

    Linear in the text: each phrase looks back only over the whitespace before it (runs no two phrases
    share) and a few characters more, never at the whole prefix.
    """
    plain: list[str] = []
    after_preposition: list[str] = []
    for match in _PHRASE.finditer(text):
        start = word_end = match.start()
        while word_end > 0 and text[word_end - 1].isspace():
            word_end -= 1
        # A capitalized word that starts a sentence is grammar, not a name: skip those.
        if start == 0 or (word_end > 0 and text[word_end - 1] in ".?!"):
            continue
        preceded = word_end < start and _PREPOSITION.search(text, max(0, word_end - 6), word_end)
        (after_preposition if preceded else plain).append(match.group())
    return plain + after_preposition


def _describe(output: str) -> str:
    """A text answer built from one tool result."""
    try:
        value = loads(output)
    except ValueError:
        return output
    if isinstance(value, dict) and "error" in value:
        error = value["error"]
        return f"The tool failed: {error.get('message', error) if isinstance(error, dict) else error}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {val}" for key, val in value.items()) + "."
    return output


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content)
