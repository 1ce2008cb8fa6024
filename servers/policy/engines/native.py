"""The native engine: our torch Nemotron-H model (`model/`) behind the policy server's OpenAI-compatible routes.

`start()` loads the checkpoint and its ChatTokenizer once and runs the continuous-batching generator on a
background thread (`model.engine.AsyncEngine`); torch is imported there, so only a server that chooses
`engine: native` ever loads it. Each chat request is rendered with the checkpoint's chat template,
generated, and parsed into reasoning, content and tool calls; with `return_token_ids` the assistant message
carries `prompt_token_ids`, `generation_token_ids` and `generation_log_probs`: exactly the ids the model
read and wrote, and the log-prob of each written id. `/v1/completions` continues a raw prompt (text or ids)
without the template; `/tokenize` answers the ids a conversation's prompt would have.

Token fidelity across turns: when an assistant message in the request carries those fields back, the prompt
is that turn's `prompt_token_ids + generation_token_ids` followed by the tokens of only what came after it
(tool results, a new user turn, the generation prompt). Messages before that turn are taken to be the ones
its ids were made from (clients send the fields back unchanged, as NeMo Gym's contract requires); their
text is not read again. History is never re-tokenized, so the trainer's ids are the ids the model saw, and the engine's prefix cache resumes the conversation instead of prefilling
it again (`usage.prompt_tokens_details.cached_tokens`). The text of what came after is the template's
rendering of the whole conversation minus its rendering of the conversation up to that assistant turn;
when the two renderings disagree (a template that rewrites history), the whole prompt is re-tokenized and a
warning is logged once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gym_core.protocol import (
    TOKEN_FIELDS,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatFunctionCall,
    ChatMessage,
    ChatToolCall,
    ChatUsage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    TokenizeRequest,
    TokenizeResponse,
    loads,
)
from gym_core.server import describe_validation_error
from servers.policy.engines.base import Engine, EngineConfig, EngineError, WeightSource

log = logging.getLogger(__name__)

THINK_START, THINK_END = "<think>", "</think>"
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# Template variables the engine sets itself; a request's chat_template_kwargs cannot replace them.
_RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


class NativeConfig(EngineConfig):
    """The policy block for `engine: native`."""

    model: str | None = None  # a checkpoint directory (HF layout) or builtin:NAME
    chat_template: str | None = None  # a template file or text replacing the checkpoint's own
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    device: str = "auto"  # auto: cuda when available, else cpu
    max_batch: int = Field(8, ge=1)  # sequences generated together
    max_len: int = Field(4096, ge=2)  # prompt + generation tokens per sequence
    prefill_chunk: int = Field(512, ge=1)  # prompt tokens per engine step
    max_tokens: int | None = Field(None, ge=1)  # generation cap for requests that set none; None: up to max_len
    prefix_cache_entries: int = Field(64, ge=0)  # finished conversations kept for multi-turn reuse
    enable_thinking: bool = True  # default of the template's enable_thinking (a request may override)
    thinking_budget: int | None = Field(None, ge=0)  # default reasoning budget in tokens; None = unlimited
    thinking_grace: int = Field(500, ge=0)  # past the budget, tokens to wait for a newline before forcing </think>
    return_token_ids: bool = True  # put the token fields on every generation (training)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None keeps torch's default


class VllmXargs(BaseModel):
    """NVIDIA's per-request thinking-budget keys for Nemotron 3 on vLLM (`vllm_xargs`)."""

    model_config = ConfigDict(extra="ignore")
    thinking_budget: int | None = Field(None, ge=0)
    thinking_budget_grace_period: int | None = Field(None, ge=0)


class NativeParams(BaseModel):
    """The request keys beyond OpenAI's core that this engine reads (vLLM's names), validated once."""

    model_config = ConfigDict(extra="ignore")
    top_k: int = 0  # vLLM writes -1 for "off"
    stop_token_ids: list[int] = Field(default_factory=list)  # in addition to the tokenizer's end-of-turn ids
    ignore_eos: bool = False
    thinking_budget: int | None = Field(None, ge=0)
    thinking_grace: int | None = Field(None, ge=0)
    vllm_xargs: VllmXargs = Field(default_factory=VllmXargs)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = None  # NeMo Gym passes chat_template_kwargs here as a JSON string
    return_tokens_as_token_ids: bool = False  # legacy completions' logprobs tokens as "token_id:N"


@dataclass
class Prompt:
    """The prompt ids of one request and how they were made."""

    ids: list[int]
    thinking: bool  # the prompt ends inside an open <think>, so the generation starts with reasoning
    spliced: bool  # extended from an earlier turn's token fields rather than tokenized whole


class NativeEngine(Engine):
    """Generates with the in-process torch model; see the module docstring for token fidelity."""

    config: NativeConfig
    config_model = NativeConfig

    def __init__(self, config: NativeConfig, model_name: str) -> None:
        if not config.model:
            raise ValueError("engine: native needs `model:` in the policy block: a checkpoint directory "
                             "or builtin:NAME (e.g. builtin:tiny)")
        super().__init__(config, model_name)
        self.tokenizer: Any = None  # model.tokenizer.ChatTokenizer once started
        self.generator: Any = None  # model.engine.Engine once started
        self._runner: Any = None  # model.engine.AsyncEngine once started
        self._vocab_size = 0
        self.spliced_prompts = 0  # prompts extended from an earlier turn's ids
        self.retokenized_prompts = 0  # prompts with earlier-turn ids that had to be tokenized whole
        self._warned_retokenize = False
        self._weight_updates = 0
        self._weights_lock = asyncio.Lock()  # one update at a time: each reads a whole checkpoint

    async def start(self) -> None:
        """Load the model and tokenizer (off the event loop) and start the generation thread."""
        if self._runner is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch

        from model.engine import AsyncEngine
        from model.engine import Engine as Generator
        from model.loader import load
        from model.prefix_cache import PrefixCache
        from model.tokenizer import ChatTokenizer

        cfg = self.config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                              else "cpu" if cfg.device == "auto" else cfg.device)
        dtype_name = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if device.type == "cuda" else "float32"
        tokenizer = ChatTokenizer.from_pretrained(cfg.model, chat_template=cfg.chat_template)
        lm = load(cfg.model, dtype=getattr(torch, dtype_name), device=device)
        self._vocab_size = lm.config.vocab_size
        self.generator = Generator(lm, tokenizer, max_batch=cfg.max_batch, max_len=cfg.max_len,
                                   prefill_chunk=cfg.prefill_chunk,
                                   prefix_cache=PrefixCache(max_entries=cfg.prefix_cache_entries))
        self.tokenizer = tokenizer
        self._runner = AsyncEngine(self.generator)
        log.info("native engine: %s on %s in %s, max_batch=%d max_len=%d", cfg.model, device, dtype_name,
                 cfg.max_batch, cfg.max_len)

    async def close(self) -> None:
        """Stop the generation thread; requests still in flight fail."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.to_thread(runner.close)

    async def update_weights(self, source: WeightSource) -> str:
        """Read new weights off the event loop, then swap them in between two decode steps; the new version.

        The tensors are read to CPU first (as `model.load` would build them), so a failure leaves the served
        weights untouched, and the device needs no room for a second copy.
        """
        self._require_started()
        async with self._weights_lock:
            try:
                state = await asyncio.to_thread(self._read_weights, source)
            except (FileNotFoundError, ValueError) as exc:
                raise EngineError(f"weights not loaded, still serving version {self.model_version}: {exc}", 422,
                                  "invalid_weights") from None
            version = source.version or str(self._weight_updates + 1)
            try:
                await self._runner.call(lambda generator: generator.swap_weights(state, version))
            except ValueError as exc:
                raise EngineError(f"weights not loaded, still serving version {self.model_version}: {exc}", 422,
                                  "invalid_weights") from None
            self._weight_updates += 1
            self.model_version = version
            log.info("native engine: serving weights version %s", version)
            return version

    def _read_weights(self, source: WeightSource) -> dict[str, Any]:
        from model.loader import read_weights

        if source.path is not None:
            return read_weights(source.path, self.generator.model)
        if not source.data:
            raise ValueError("the upload is empty; send the safetensors bytes as the body")
        # safetensors reads from a file (memory-mapped); the file goes as soon as the tensors are read.
        with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as file:
            file.write(source.data)
        try:
            return read_weights(file.name, self.generator.model)
        finally:
            os.unlink(file.name)

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Render, generate and parse one completion (with the token fields when `return_token_ids`)."""
        self._require_started()
        extras = _native_params(request)
        # Rendering a long conversation takes milliseconds of pure Python: keep it off the event loop.
        prompt = await asyncio.to_thread(self.build_prompt, request, extras)
        room = self.config.max_len - len(prompt.ids)
        params = self.sampling_params(request, extras, max(room, 1))
        if room <= 0:
            # The conversation outgrew max_len: the episode ends here (as an upstream's context overflow does).
            return self._completion(request, prompt, [], [], "", "length", cached=0, reasoning_tokens=None,
                                    version=self.model_version)
        result = await self._generate(prompt.ids, params)
        return self._completion(request, prompt, result.token_ids, result.logprobs, result.text or "",
                                result.finish_reason, cached=result.cached_tokens,
                                reasoning_tokens=result.num_reasoning_tokens, version=result.weights_version)

    async def complete(self, request: CompletionRequest, *, session_id: str | None = None) -> CompletionResponse:
        """Continue a raw prompt (text, tokenized as is without a BOS, or token ids); no chat template."""
        from model.engine import GenerationResult

        self._require_started()
        if request.logprobs:
            raise EngineError("this engine gives the sampled tokens' log-probs only, no alternatives; "
                              "send logprobs: 0 (or leave it out)", 422, "invalid_request")
        if (request.model_extra or {}).get("echo"):
            raise EngineError("echo is not supported: the prompt's own log-probs are not computed", 422,
                              "invalid_request")
        extras = _native_params(request)
        ids = self.tokenizer.encode(request.prompt) if isinstance(request.prompt, str) else request.prompt
        if not ids:
            raise EngineError("prompt is empty; send text or at least one token id", 422, "invalid_request")
        self._check_vocabulary(ids, "prompt has token ids")
        room = self.config.max_len - len(ids)
        params = self.sampling_params(request, extras, max(room, 1))
        # A prompt that fills max_len ends here with nothing generated, as an overflowing chat does.
        result = await self._generate(ids, params) if room > 0 else GenerationResult(
            request_id="", prompt_token_ids=ids, token_ids=[], logprobs=[], finish_reason="length", text="")
        fields: dict[str, Any] = {}
        if self.config.return_token_ids:
            fields = {"prompt_token_ids": ids, "generation_token_ids": list(result.token_ids),
                      "generation_log_probs": list(result.logprobs)}
        if request.logprobs is not None:
            fields["logprobs"] = self._legacy_logprobs(result.token_ids, result.logprobs,
                                                       as_ids=extras.return_tokens_as_token_ids)
        choice = CompletionChoice(text=result.text or "", finish_reason=result.finish_reason, **fields)
        usage = _usage(len(ids), len(result.token_ids), result.cached_tokens, None)
        return CompletionResponse(model=self.model_name, choices=[choice], usage=usage)

    async def tokenize(self, request: TokenizeRequest, *, session_id: str | None = None) -> TokenizeResponse:
        """A conversation's ids exactly as `chat` would build its prompt (earlier turns' ids spliced), or a prompt's."""
        if self.tokenizer is None:
            raise EngineError("the native engine is not started (or already stopped)", 503, "unavailable")
        if request.prompt is not None:
            ids = self.tokenizer.encode(request.prompt)
        else:
            chat = ChatCompletionRequest(messages=request.messages or [], tools=request.tools,
                                         chat_template_kwargs=request.chat_template_kwargs or {})
            ids = await asyncio.to_thread(self._conversation_ids, chat, request.add_generation_prompt)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.config.max_len)

    def _conversation_ids(self, request: ChatCompletionRequest, add_generation_prompt: bool) -> list[int]:
        if add_generation_prompt:
            return self.build_prompt(request).ids
        kwargs = _template_kwargs(_native_params(request), self.config.enable_thinking)
        messages = [_template_message(m) for m in request.messages]
        return self.tokenizer.encode(self._render(messages, _rendered_tools(request), kwargs,
                                                  add_generation_prompt=False))

    def _require_started(self) -> None:
        if self._runner is None:
            raise EngineError("the native engine is not started (or already stopped)", 503, "unavailable")

    async def _generate(self, ids: list[int], params: Any) -> Any:
        """Run one generation on the engine thread; failures become EngineErrors with the right status."""
        from model.engine import GenerationRequest

        try:
            return await self._runner.submit(GenerationRequest(ids, params))
        except ValueError as exc:
            raise EngineError(f"invalid request: {exc}", 422, "invalid_request") from None
        except Exception as exc:  # noqa: BLE001 -- a failed engine step or a stopped engine, not the caller's fault
            if self._runner is None:
                raise EngineError("the native engine stopped while generating", 503, "unavailable") from None
            raise EngineError(f"generation failed: {type(exc).__name__}: {exc}", 500, "engine_error") from None

    def _check_vocabulary(self, ids: list[int], what: str) -> None:
        bad = [i for i in ids if not 0 <= i < self._vocab_size]
        if bad:
            raise EngineError(f"{what} outside the vocabulary (0..{self._vocab_size - 1}): {bad[:5]}", 422,
                              "invalid_request")

    def _legacy_logprobs(self, ids: list[int], logprobs: list[float], *, as_ids: bool) -> dict[str, Any]:
        """The legacy completions `logprobs` object (no alternatives); tokens as text, or `token_id:N` as vLLM's."""
        pieces = [self.tokenizer.decode([i]) for i in ids]
        offsets = [0, *itertools.accumulate(len(p) for p in pieces[:-1])] if pieces else []
        tokens = [f"token_id:{i}" for i in ids] if as_ids else pieces
        return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": None, "text_offset": offsets}

    # ---- prompt ---------------------------------------------------------------------------------
    def build_prompt(self, request: ChatCompletionRequest, extras: NativeParams | None = None) -> Prompt:
        """The prompt ids: extended from the last assistant turn that carries token fields, else tokenized whole."""
        extras = extras or _native_params(request)
        tokens = self.tokenizer
        kwargs = _template_kwargs(extras, self.config.enable_thinking)
        tools = _rendered_tools(request)
        messages = [_template_message(m) for m in request.messages]
        if not messages:
            raise EngineError("messages is empty; send at least one message", 422, "invalid_request")
        anchor = next((i for i in range(len(request.messages) - 1, -1, -1)
                       if request.messages[i].role == "assistant" and request.messages[i].has_tokens), None)
        if anchor is not None:
            prompt = self._spliced_prompt(request.messages[anchor], messages, anchor + 1, tools, kwargs)
            if prompt is not None:
                self.spliced_prompts += 1
                return prompt
            self.retokenized_prompts += 1
        text = self._render(messages, tools, kwargs, add_generation_prompt=True)
        return Prompt(tokens.encode(text), _opens_reasoning(text), spliced=False)

    def _spliced_prompt(self, turn: ChatMessage, messages: list[dict[str, Any]], split: int,
                        tools: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> Prompt | None:
        """`turn`'s ids + the tokens of the messages after it; None when the renderings do not line up."""
        previous = [*turn.prompt_token_ids, *turn.generation_token_ids]  # type: ignore[misc]
        self._check_vocabulary(previous, "an assistant message (send its token fields back unchanged) carries ids")
        # The earlier turns are the model's own ids here, so the template's history truncation has no say.
        kwargs = {**kwargs, "truncate_history_thinking": False}
        full = self._render(messages, tools, kwargs, add_generation_prompt=True)
        prefix = self._render(messages[:split], tools, kwargs, add_generation_prompt=False)
        im_end = self.tokenizer.decode([self.tokenizer.im_end_id])
        end = prefix.rfind(im_end)
        if end < 0 or not full.startswith(prefix):
            if not self._warned_retokenize:
                self._warned_retokenize = True
                log.warning("native engine: the chat template renders the conversation's history differently "
                            "once new messages follow, so the prompt was re-tokenized whole instead of extending "
                            "the previous turn's token ids (training sees re-tokenized history); logged once")
            return None
        # The model's turn ends with its own end-of-turn id when it stopped there; otherwise the template's
        # end-of-turn marker is appended before the next messages.
        closed = bool(turn.generation_token_ids) and turn.generation_token_ids[-1] in self.tokenizer.eos_ids
        glue = full[end + len(im_end):] if closed else full[end:]
        return Prompt(previous + self.tokenizer.encode(glue), _opens_reasoning(full), spliced=True)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, kwargs: dict[str, Any],
                *, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tools, add_generation_prompt=add_generation_prompt,
                                                      **kwargs)
        except Exception as exc:  # noqa: BLE001 -- jinja raises many kinds; all mean the request cannot render
            raise EngineError(f"the chat template cannot render this conversation: {type(exc).__name__}: {exc}",
                              422, "invalid_request") from None

    # ---- sampling -------------------------------------------------------------------------------
    def sampling_params(self, request: ChatCompletionRequest | CompletionRequest, extras: NativeParams,
                        room: int) -> Any:
        """The request's sampling fields as SamplingParams; stops on the tokenizer's end-of-turn ids by default."""
        from model.sampling import SamplingParams

        self._check_vocabulary(extras.stop_token_ids, "stop_token_ids has ids")
        requested = _first(getattr(request, "max_completion_tokens", None), request.max_tokens,
                           self.config.max_tokens)
        if requested is not None and requested < 1:
            raise EngineError(f"max_tokens must be at least 1, got {requested}", 422, "invalid_request")
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        eos = () if extras.ignore_eos else tuple(self.tokenizer.eos_ids)
        budget = _first(extras.thinking_budget, extras.vllm_xargs.thinking_budget, self.config.thinking_budget)
        grace = _first(extras.thinking_grace, extras.vllm_xargs.thinking_budget_grace_period,
                       self.config.thinking_grace)
        try:
            return SamplingParams(
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                top_k=max(extras.top_k, 0),
                seed=request.seed,
                max_tokens=min(requested or room, room),
                stop_token_ids=tuple(dict.fromkeys([*eos, *extras.stop_token_ids])),
                stop=tuple(s for s in stop if s),
                thinking_budget=budget,
                thinking_grace=grace,
            )
        except ValueError as exc:
            raise EngineError(f"{exc}: temperature must be >= 0 and top_p in (0, 1]", 422,
                              "invalid_request") from None

    # ---- completion -----------------------------------------------------------------------------
    def _completion(self, request: ChatCompletionRequest, prompt: Prompt, token_ids: list[int],
                    logprobs: list[float], text: str, finish_reason: str, *, cached: int,
                    reasoning_tokens: int | None, version: str) -> ChatCompletionResponse:
        """The generated text parsed into an assistant message, with usage and (optionally) the token fields."""
        from model.tool_calls import parse_generation

        parse_tools = bool(request.tools) and request.tool_choice != "none"
        parsed = parse_generation(text, thinking=prompt.thinking,
                                  tools=[t.function.model_dump(exclude_none=True) for t in request.tools or []])
        content = parsed.content
        calls = []
        if parse_tools:
            calls = [ChatToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                                  function=ChatFunctionCall(name=c.name, arguments=c.arguments_json()))
                     for c in parsed.tool_calls]
        elif parsed.tool_calls:  # no tools on offer: tool-call text is just text
            content = _after_reasoning(text, parsed.reasoning is not None).strip()
        if parsed.parse_error:
            log.debug("native engine: tool call not parsed: %s", parsed.parse_error)
        fields: dict[str, Any] = {}
        if self.config.return_token_ids:
            fields = {"prompt_token_ids": prompt.ids, "generation_token_ids": list(token_ids),
                      "generation_log_probs": list(logprobs)}
        if parsed.reasoning is not None:
            fields["reasoning_content"] = parsed.reasoning
        if calls:
            fields["tool_calls"] = calls
        message = ChatMessage(role="assistant", content=content or (None if calls else ""), **fields)
        return ChatCompletionResponse(
            model=self.model_name, usage=_usage(len(prompt.ids), len(token_ids), cached, reasoning_tokens),
            choices=[ChatChoice(message=message, finish_reason="tool_calls" if calls else finish_reason)],
            metadata={"model_version": version})


def _native_params(request: ChatCompletionRequest | CompletionRequest) -> NativeParams:
    try:
        extras = NativeParams.model_validate(request.model_extra or {})
    except ValidationError as exc:
        raise EngineError(describe_validation_error(exc), 422, "invalid_request") from None
    from_metadata = (extras.metadata or {}).get("chat_template_kwargs")
    if isinstance(from_metadata, str):
        try:
            from_metadata = loads(from_metadata)
        except ValueError:
            from_metadata = None
        if not isinstance(from_metadata, dict):
            raise EngineError("metadata.chat_template_kwargs must be a JSON object", 422, "invalid_request")
    if isinstance(from_metadata, dict):
        extras.chat_template_kwargs = {**from_metadata, **extras.chat_template_kwargs}
    return extras


def _usage(prompt: int, completion: int, cached: int, reasoning_tokens: int | None) -> ChatUsage:
    details = {"completion_tokens_details": {"reasoning_tokens": reasoning_tokens}} \
        if reasoning_tokens is not None else {}
    return ChatUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details={"cached_tokens": cached}, **details)


def _first(*values: Any) -> Any:
    """The first value that is not None (0 counts)."""
    return next((v for v in values if v is not None), None)


def _template_kwargs(extras: NativeParams, enable_thinking: bool) -> dict[str, Any]:
    """Template variables: the engine's enable_thinking default, overridden by the request's kwargs."""
    kwargs = {k: v for k, v in extras.chat_template_kwargs.items() if k not in _RESERVED_TEMPLATE_KWARGS}
    kwargs.setdefault("enable_thinking", enable_thinking)
    return kwargs


def _rendered_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tool schemas the template lists; none when tool_choice is "none"."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [t.model_dump(exclude_none=True) for t in request.tools]


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as the template reads it, without the (possibly long) token fields."""
    if isinstance(message.content, list):
        other = sorted({part.type for part in message.content} - _TEXT_PARTS)
        if other:
            raise EngineError(f"a {message.role} message has {', '.join(other)} content; this model reads text only",
                              422, "invalid_request")
    return message.model_dump(exclude_none=True, exclude=set(TOKEN_FIELDS))


def _opens_reasoning(prompt_text: str) -> bool:
    return prompt_text.rstrip().endswith(THINK_START)


def _after_reasoning(text: str, had_reasoning: bool) -> str:
    """The text after the reasoning, tool-call blocks and all (for when no tools were offered)."""
    if THINK_END in text:
        return text.split(THINK_END, 1)[1]
    return "" if had_reasoning else text
