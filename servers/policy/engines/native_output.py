"""The native engine's answers: generations parsed into OpenAI chat choices and usage.

A choice's message holds the reasoning (`reasoning_content`), the content and the parsed tool calls; with
`return_token_ids` also the token fields. With `logprobs: true` the choice's `logprobs.content` has one entry
per generated token of the text (reasoning, `</think>`, content, tool-call markup; the end-of-turn token that
stopped the generation is left out, it is in `generation_token_ids`), shaped as the `openai` SDK's
`ChatCompletionTokenLogprob`: `token`, `bytes` (the token's own bytes), `logprob`, `top_logprobs`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import uuid
from typing import Any

from gym_core.protocol import ChatChoice, ChatCompletionRequest, ChatFunctionCall, ChatMessage, ChatToolCall, ChatUsage
from servers.policy.engines.native_prompt import Prompt

log = logging.getLogger(__name__)

THINK_END = "</think>"


class TokenPieces:
    """Each token's text and bytes, cached (a byte-level BPE token may hold part of a UTF-8 character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        raw = getattr(tokenizer, "tokenizer", None)  # the `tokenizers.Tokenizer` under a ChatTokenizer
        byte_level = raw is not None and type(raw.decoder).__name__ == "ByteLevel"
        self._byte_of = _byte_decoder() if byte_level else None
        self._special = {i: t.content for i, t in raw.get_added_tokens_decoder().items()} if raw is not None else {}
        self.text = functools.lru_cache(maxsize=1 << 16)(self._text)
        self.bytes = functools.lru_cache(maxsize=1 << 16)(self._bytes)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _bytes(self, token_id: int) -> list[int]:
        if self._byte_of is not None and token_id not in self._special:
            piece = self.tokenizer.tokenizer.id_to_token(token_id)
            if piece is not None and all(c in self._byte_of for c in piece):
                return [self._byte_of[c] for c in piece]
        return list(self.text(token_id).encode())


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the character a byte-level BPE writes for each byte -> that byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_logprobs(pieces: TokenPieces, ids: list[int], logprobs: list[float],
                   top: list[list[tuple[int, float]]] | None) -> list[dict[str, Any]]:
    """One `ChatCompletionTokenLogprob` (also Responses' output_text `Logprob`) per token."""
    entries = []
    for i, (token, logprob) in enumerate(zip(ids, logprobs, strict=True)):
        alternatives = [{"token": pieces.text(t), "bytes": pieces.bytes(t), "logprob": lp}
                        for t, lp in (top[i] if top else ())]
        entries.append({"token": pieces.text(token), "bytes": pieces.bytes(token), "logprob": logprob,
                        "top_logprobs": alternatives})
    return entries


def chat_choice(index: int, request: ChatCompletionRequest, prompt: Prompt, result: Any, pieces: TokenPieces, *,
                stop_ids: tuple[int, ...], return_token_ids: bool, parallel_tool_calls: bool = True) -> ChatChoice:
    """One generation (a `model.engine.GenerationResult`) parsed into a chat choice."""
    from model.tool_calls import parse_generation

    text, ids = result.text or "", result.token_ids
    parse_tools = bool(request.tools) and request.tool_choice != "none"
    parsed = parse_generation(text, thinking=prompt.thinking,
                              tools=[t.function.model_dump(exclude_none=True) for t in request.tools or []])
    content = parsed.content
    calls = []
    if parse_tools:
        calls = [ChatToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                              function=ChatFunctionCall(name=c.name, arguments=c.arguments_json()))
                 for c in parsed.tool_calls]
        if not parallel_tool_calls:
            calls = calls[:1]
    elif parsed.tool_calls:  # no tools on offer: tool-call text is just text
        content = _after_reasoning(text, parsed.reasoning is not None).strip()
    if parsed.parse_error:
        log.debug("native engine: tool call not parsed: %s", parsed.parse_error)
    fields: dict[str, Any] = {}
    if return_token_ids:
        fields = {"prompt_token_ids": prompt.ids, "generation_token_ids": list(ids),
                  "generation_log_probs": list(result.logprobs)}
    if parsed.reasoning is not None:
        fields["reasoning_content"] = parsed.reasoning
    if calls:
        fields["tool_calls"] = calls
    message = ChatMessage(role="assistant", content=content or (None if calls else ""), **fields)
    extra: dict[str, Any] = {}
    if request.logprobs:
        shown = len(ids) - 1 if ids and result.finish_reason == "stop" and ids[-1] in stop_ids else len(ids)
        extra["logprobs"] = {"content": token_logprobs(pieces, ids[:shown], result.logprobs[:shown],
                                                       result.top_logprobs), "refusal": None}
    return ChatChoice(index=index, message=message, finish_reason="tool_calls" if calls else result.finish_reason,
                      **extra)


def chat_usage(prompt_tokens: int, results: list[Any]) -> ChatUsage:
    """Usage of n samples of one prompt: the prompt counted once, every sample's tokens, reasoning included."""
    completion = sum(len(r.token_ids) for r in results)
    cached = min((r.cached_tokens for r in results), default=0)
    reasoning = sum(r.num_reasoning_tokens or 0 for r in results)
    return ChatUsage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                     total_tokens=prompt_tokens + completion, prompt_tokens_details={"cached_tokens": cached},
                     completion_tokens_details={"reasoning_tokens": reasoning})


def legacy_logprobs(pieces: TokenPieces, ids: list[int], logprobs: list[float],
                    top: list[list[tuple[int, float]]] | None, *, as_ids: bool) -> dict[str, Any]:
    """The legacy completions `logprobs` object; tokens as text, or `token_id:N` as vLLM's option writes them."""
    texts = [pieces.text(i) for i in ids]
    offsets = [0, *itertools.accumulate(len(t) for t in texts[:-1])] if texts else []

    def name(token: int) -> str:
        return f"token_id:{token}" if as_ids else pieces.text(token)

    alternatives = [{name(t): lp for t, lp in row} for row in top] if top else None
    return {"tokens": [name(i) for i in ids], "token_logprobs": list(logprobs), "top_logprobs": alternatives,
            "text_offset": offsets}


def _after_reasoning(text: str, had_reasoning: bool) -> str:
    """The text after the reasoning, tool-call blocks and all (for when no tools were offered)."""
    if THINK_END in text:
        return text.split(THINK_END, 1)[1]
    return "" if had_reasoning else text
