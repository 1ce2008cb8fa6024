"""The native engine's prompts: a chat request rendered with the checkpoint's template, earlier turns' ids kept.

Token fidelity across turns: when an assistant message in the request carries `prompt_token_ids` and
`generation_token_ids`, the prompt is that turn's ids followed by the tokens of only what came after it (tool
results, a new user turn, the generation prompt). Messages before that turn are taken to be the ones its ids
were made from (clients send the fields back unchanged, as NeMo Gym's contract requires); their text is not
read again. History is never re-tokenized, so the trainer's ids are the ids the model saw, and the engine's
prefix cache resumes the conversation instead of prefilling it again. The text of what came after is the
template's rendering of the whole conversation minus its rendering of the conversation up to that assistant
turn; when the two renderings disagree (a template that rewrites history), the whole prompt is re-tokenized
and a warning is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gym_core.protocol import TOKEN_FIELDS, ChatCompletionRequest, ChatMessage
from servers.policy.engines.base import EngineError
from servers.policy.engines.native_request import NativeParams

log = logging.getLogger(__name__)

THINK_START = "<think>"
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# Template variables the engine sets itself; a request's chat_template_kwargs cannot replace them.
_RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


@dataclass
class Prompt:
    """The prompt ids of one request and how they were made."""

    ids: list[int]
    thinking: bool  # the prompt ends inside an open <think>, so the generation starts with reasoning
    spliced: bool  # extended from an earlier turn's token fields rather than tokenized whole


class PromptBuilder:
    """Builds prompt ids for chat requests with one ChatTokenizer; counts how each prompt was made."""

    def __init__(self, tokenizer: Any, *, enable_thinking: bool, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.enable_thinking = enable_thinking  # the default; a request's chat_template_kwargs may override it
        self.vocab_size = vocab_size
        self.spliced = 0  # prompts extended from an earlier turn's ids
        self.retokenized = 0  # prompts with earlier-turn ids that had to be tokenized whole
        self._warned = False

    def build(self, request: ChatCompletionRequest, extras: NativeParams) -> Prompt:
        """The prompt ids: extended from the last assistant turn that carries token fields, else tokenized whole."""
        kwargs = self.template_kwargs(extras)
        tools = rendered_tools(request)
        messages = [template_message(m) for m in request.messages]
        if not messages:
            raise EngineError("messages is empty; send at least one message", 422, "invalid_request")
        anchor = next((i for i in range(len(request.messages) - 1, -1, -1)
                       if request.messages[i].role == "assistant" and request.messages[i].has_tokens), None)
        if anchor is not None:
            prompt = self._spliced(request.messages[anchor], messages, anchor + 1, tools, kwargs)
            if prompt is not None:
                self.spliced += 1
                return prompt
            self.retokenized += 1
        text = self.render(messages, tools, kwargs, add_generation_prompt=True)
        return Prompt(self.tokenizer.encode(text), _opens_reasoning(text), spliced=False)

    def conversation_ids(self, request: ChatCompletionRequest, extras: NativeParams) -> list[int]:
        """The ids of the conversation itself, without the generation prompt (vLLM's add_generation_prompt false)."""
        messages = [template_message(m) for m in request.messages]
        return self.tokenizer.encode(self.render(messages, rendered_tools(request), self.template_kwargs(extras),
                                                 add_generation_prompt=False))

    def template_kwargs(self, extras: NativeParams) -> dict[str, Any]:
        """Template variables: the engine's enable_thinking default, overridden by the request's kwargs."""
        kwargs = {k: v for k, v in extras.chat_template_kwargs.items() if k not in _RESERVED_TEMPLATE_KWARGS}
        if extras.reasoning_effort is not None:  # OpenAI's spelling; chat_template_kwargs wins when both are sent
            kwargs.setdefault("enable_thinking", extras.reasoning_effort != "none")
        kwargs.setdefault("enable_thinking", self.enable_thinking)
        return kwargs

    def check_vocabulary(self, ids: list[int], what: str) -> None:
        """A 422 naming the first ids outside the vocabulary."""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise EngineError(f"{what} outside the vocabulary (0..{self.vocab_size - 1}): {bad[:5]}", 422,
                              "invalid_request")

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, kwargs: dict[str, Any],
               *, add_generation_prompt: bool) -> str:
        """The template's text for a conversation; a template error is the request's fault (422)."""
        try:
            return self.tokenizer.apply_chat_template(messages, tools, add_generation_prompt=add_generation_prompt,
                                                      **kwargs)
        except Exception as exc:  # noqa: BLE001 -- jinja raises many kinds; all mean the request cannot render
            raise EngineError(f"the chat template cannot render this conversation: {type(exc).__name__}: {exc}",
                              422, "invalid_request") from None

    def _spliced(self, turn: ChatMessage, messages: list[dict[str, Any]], split: int,
                 tools: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> Prompt | None:
        """`turn`'s ids + the tokens of the messages after it; None when the renderings do not line up."""
        previous = [*turn.prompt_token_ids, *turn.generation_token_ids]  # type: ignore[misc]
        self.check_vocabulary(previous, "an assistant message (send its token fields back unchanged) carries ids")
        # The earlier turns are the model's own ids here, so the template's history truncation has no say.
        kwargs = {**kwargs, "truncate_history_thinking": False}
        full = self.render(messages, tools, kwargs, add_generation_prompt=True)
        prefix = self.render(messages[:split], tools, kwargs, add_generation_prompt=False)
        im_end = self.tokenizer.decode([self.tokenizer.im_end_id])
        end = prefix.rfind(im_end)
        if end < 0 or not full.startswith(prefix):
            if not self._warned:
                self._warned = True
                log.warning("native engine: the chat template renders the conversation's history differently "
                            "once new messages follow, so the prompt was re-tokenized whole instead of extending "
                            "the previous turn's token ids (training sees re-tokenized history); logged once")
            return None
        # The model's turn ends with its own end-of-turn id when it stopped there; otherwise the template's
        # end-of-turn marker is appended before the next messages.
        closed = bool(turn.generation_token_ids) and turn.generation_token_ids[-1] in self.tokenizer.eos_ids
        glue = full[end + len(im_end):] if closed else full[end:]
        return Prompt(previous + self.tokenizer.encode(glue), _opens_reasoning(full), spliced=True)


def rendered_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tool schemas the template lists; none when tool_choice is "none"."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [t.model_dump(exclude_none=True) for t in request.tools]


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as the template reads it, without the (possibly long) token fields."""
    if isinstance(message.content, list):
        other = sorted({part.type for part in message.content} - _TEXT_PARTS)
        if other:
            raise EngineError(f"a {message.role} message has {', '.join(other)} content; this model reads text only",
                              422, "invalid_request")
    return message.model_dump(exclude_none=True, exclude=set(TOKEN_FIELDS))


def _opens_reasoning(prompt_text: str) -> bool:
    return prompt_text.rstrip().endswith(THINK_START)
