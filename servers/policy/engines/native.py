"""The native engine: our torch Nemotron-H model (`model/`) behind the policy server's OpenAI-compatible routes.

`start()` loads the checkpoint and its ChatTokenizer once and runs the continuous-batching generator on a
background thread (`model.async_engine.AsyncEngine`); torch is imported there, so only a server that chooses
`engine: native` ever loads it. Each chat request is rendered with the checkpoint's chat template
(`native_prompt`: earlier turns' ids are extended, never re-tokenized), generated, and parsed into reasoning,
content and tool calls (`native_output`); with `return_token_ids` the assistant message carries
`prompt_token_ids`, `generation_token_ids` and `generation_log_probs`: exactly the ids the model read and wrote,
and the log-prob of each written id. `n` > 1 samples share one prefill of the prompt. What a request may ask
is in `native_request`. `/v1/completions` continues a raw prompt (text or ids) without the template;
`/tokenize` answers the ids a conversation's prompt would have; `update_weights` swaps in new weights between
two decode steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field

from gym_core.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from servers.policy.engines.base import Engine, EngineConfig, EngineError, WeightSource
from servers.policy.engines.native_output import TokenPieces, chat_choice, chat_usage, legacy_logprobs
from servers.policy.engines.native_prompt import Prompt, PromptBuilder
from servers.policy.engines.native_request import (
    NativeParams,
    check_chat_request,
    native_params,
    sampling_params,
)
from servers.policy.engines.native_stream import chat_chunks

log = logging.getLogger(__name__)

_STOPPING = "the native engine is shutting down; send the request to another replica or retry after a restart"


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
    request_timeout: float | None = Field(None, gt=0)  # seconds a generation may take before it is dropped (504)
    # torch.compile the decode step, compiled for every attention span before the server reports healthy.
    # None: on with CUDA, off on CPU, where its warm-up takes minutes (docs/policy_server.md, "Compiled decode").
    compile: bool | None = None
    close_timeout: float = Field(10.0, gt=0)  # seconds shutdown waits for the engine's current step


class NativeEngine(Engine):
    """Generates with the in-process torch model; see the module docstring."""

    config: NativeConfig
    config_model = NativeConfig
    supports_n = True

    def __init__(self, config: NativeConfig, model_name: str) -> None:
        if not config.model:
            raise ValueError("engine: native needs `model:` in the policy block: a checkpoint directory "
                             "or builtin:NAME (e.g. builtin:tiny)")
        super().__init__(config, model_name)
        self.tokenizer: Any = None  # model.tokenizer.ChatTokenizer once started
        self.prompts: PromptBuilder | None = None
        self.pieces: TokenPieces | None = None
        self.generator: Any = None  # model.engine.Engine once started
        self._runner: Any = None  # model.async_engine.AsyncEngine once started
        self._weight_updates = 0
        self._stopping = False
        self._weights_lock = asyncio.Lock()  # one update at a time: each reads a whole checkpoint

    @property
    def spliced_prompts(self) -> int:
        """Prompts extended from an earlier turn's ids."""
        return self.prompts.spliced if self.prompts else 0

    @property
    def retokenized_prompts(self) -> int:
        """Prompts with earlier-turn ids that had to be tokenized whole."""
        return self.prompts.retokenized if self.prompts else 0

    def use_tokenizer(self, tokenizer: Any, vocab_size: int) -> None:
        """Set the tokenizer and what is built on it (`start` does; a test with a stand-in model may)."""
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, enable_thinking=self.config.enable_thinking, vocab_size=vocab_size)
        self.pieces = TokenPieces(tokenizer)

    async def start(self) -> None:
        """Load the model and tokenizer (off the event loop) and start the generation thread."""
        if self._runner is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch

        from model.async_engine import AsyncEngine
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
        compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
        self.generator = Generator(lm, tokenizer, max_batch=cfg.max_batch, max_len=cfg.max_len,
                                   prefill_chunk=cfg.prefill_chunk,
                                   prefix_cache=PrefixCache(max_entries=cfg.prefix_cache_entries), compile=compiled)
        if compiled:
            started = time.monotonic()
            spans = self.generator.warm_up(lambda done, total: log.info(
                "native engine: compiled the decode step for attention span %d/%d (%.0f s)", done, total,
                time.monotonic() - started))
            log.info("native engine: decode step compiled for %d spans at batch %d in %.1f s", spans,
                     cfg.max_batch, time.monotonic() - started)
        self.use_tokenizer(tokenizer, lm.config.vocab_size)
        self._runner = AsyncEngine(self.generator)
        log.info("native engine: %s on %s in %s, max_batch=%d max_len=%d, compiled decode %s", cfg.model, device,
                 dtype_name, cfg.max_batch, cfg.max_len, "on" if compiled else "off")

    async def close(self) -> None:
        """Stop the generation thread (bounded by `close_timeout`); requests in flight or arriving now fail (503)."""
        if self._runner is not None:
            self._stopping = True
            runner, self._runner = self._runner, None
            await asyncio.to_thread(runner.close, self.config.close_timeout)

    # ---- weights ------------------------------------------------------------------------------------
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

    # ---- routes -------------------------------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Render, generate (n samples sharing one prefill) and parse; the token fields when `return_token_ids`."""
        self._require_started()
        extras = native_params(request)
        check_chat_request(request)
        # Rendering a long conversation takes milliseconds of pure Python: keep it off the event loop.
        prompt = await asyncio.to_thread(self.prompts.build, request, extras)
        room = self.config.max_len - len(prompt.ids)
        top = (request.top_logprobs or 0) if request.logprobs else 0
        params = [self._sampling(request, extras, room, top_logprobs=top, seed_offset=i) for i in range(request.n)]
        if room <= 0:
            # The conversation outgrew max_len: the episode ends here (as an upstream's context overflow does).
            results = [_nothing(prompt.ids, self.model_version)] * request.n
        else:
            results = await self._generate_all(prompt.ids, params)
        choices = [chat_choice(i, request, prompt, result, self.pieces, stop_ids=params[i].stop_token_ids,
                               return_token_ids=self.config.return_token_ids,
                               parallel_tool_calls=extras.parallel_tool_calls)
                   for i, result in enumerate(results)]
        return ChatCompletionResponse(model=self.model_name, choices=choices,
                                      usage=chat_usage(len(prompt.ids), results),
                                      metadata={"model_version": results[0].weights_version})

    async def chat_stream(self, request: ChatCompletionRequest, *,
                          session_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """`chat.completion.chunk` dicts as the tokens are sampled (see `native_stream`); usage on the last."""
        self._require_started()
        extras = native_params(request)
        check_chat_request(request)
        if request.n > 1:
            raise EngineError("stream: true takes n: 1 with the native engine; send n: 1, or stream: false for "
                              "n samples", 422, "unsupported_parameter")
        prompt = await asyncio.to_thread(self.prompts.build, request, extras)
        room = self.config.max_len - len(prompt.ids)
        top = (request.top_logprobs or 0) if request.logprobs else 0
        params = self._sampling(request, extras, room, top_logprobs=top)
        batches = self._stream(prompt.ids, params) if room > 0 else _one([_nothing(prompt.ids, self.model_version)])
        chunks = chat_chunks(batches, request=request, prompt=prompt, pieces=self.pieces, params=params,
                             model=self.model_name, return_token_ids=self.config.return_token_ids,
                             parallel_tool_calls=extras.parallel_tool_calls)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def complete(self, request: CompletionRequest, *, session_id: str | None = None) -> CompletionResponse:
        """Continue a raw prompt (text, tokenized as is without a BOS, or token ids); no chat template."""
        self._require_started()
        extras = native_params(request)
        ids = self.tokenizer.encode(request.prompt) if isinstance(request.prompt, str) else request.prompt
        if not ids:
            raise EngineError("prompt is empty; send text or at least one token id", 422, "invalid_request")
        self.prompts.check_vocabulary(ids, "prompt has token ids")
        room = self.config.max_len - len(ids)
        params = self._sampling(request, extras, room, top_logprobs=request.logprobs or 0)
        # A prompt that fills max_len ends here with nothing generated, as an overflowing chat does.
        [result] = await self._generate_all(ids, [params]) if room > 0 else [_nothing(ids, self.model_version)]
        fields: dict[str, Any] = {}
        if self.config.return_token_ids:
            fields = {"prompt_token_ids": ids, "generation_token_ids": list(result.token_ids),
                      "generation_log_probs": list(result.logprobs)}
        if request.logprobs is not None:
            fields["logprobs"] = legacy_logprobs(self.pieces, result.token_ids, result.logprobs, result.top_logprobs,
                                                 as_ids=extras.return_tokens_as_token_ids)
        choice = CompletionChoice(text=result.text or "", finish_reason=result.finish_reason, **fields)
        return CompletionResponse(model=self.model_name, choices=[choice], usage=chat_usage(len(ids), [result]))

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

    def build_prompt(self, request: ChatCompletionRequest, extras: NativeParams | None = None) -> Prompt:
        """The prompt ids `chat` generates from (see `native_prompt`)."""
        return self.prompts.build(request, extras or native_params(request))

    def _conversation_ids(self, request: ChatCompletionRequest, add_generation_prompt: bool) -> list[int]:
        extras = native_params(request)
        if add_generation_prompt:
            return self.prompts.build(request, extras).ids
        return self.prompts.conversation_ids(request, extras)

    # ---- generation ---------------------------------------------------------------------------------
    def _sampling(self, request: ChatCompletionRequest | CompletionRequest, extras: NativeParams, room: int,
                  **options: Any) -> Any:
        self.prompts.check_vocabulary(extras.stop_token_ids, "stop_token_ids has ids")
        return sampling_params(request, extras, max(room, 1), eos_ids=self.tokenizer.eos_ids, defaults=self.config,
                               **options)

    def _require_started(self) -> None:
        if self._runner is None:
            raise EngineError(_STOPPING if self._stopping else "the native engine is not started", 503, "unavailable")

    async def _generate_all(self, ids: list[int], params: list[Any]) -> list[Any]:
        """One generation per SamplingParams, on the engine thread; several share the prompt's prefill.

        Failures become EngineErrors with the right status. Cancelling the caller (its client went away) or
        passing `request_timeout` removes the requests from the engine before the next decode step.
        """
        from model.async_engine import EngineClosed
        from model.engine import GenerationRequest

        group = uuid.uuid4().hex if len(params) > 1 else None
        requests = [GenerationRequest(ids, p, prefill_group=group) for p in params]
        work = self._runner.submit(requests[0]) if len(requests) == 1 else self._runner.submit_all(requests)
        timeout = self.config.request_timeout
        try:
            result = await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise EngineError(f"the generation passed its deadline (request_timeout: {timeout} s); ask for fewer "
                              "max_tokens or raise request_timeout", 504, "timeout") from None
        except EngineClosed:
            raise EngineError(_STOPPING, 503, "unavailable") from None
        except ValueError as exc:
            raise EngineError(f"invalid request: {exc}", 422, "invalid_request") from None
        except Exception as exc:  # noqa: BLE001 -- a failed engine step, not the caller's fault
            raise EngineError(f"generation failed: {type(exc).__name__}: {exc}", 500, "engine_error") from None
        return [result] if len(requests) == 1 else result


    async def _stream(self, ids: list[int], params: Any) -> AsyncIterator[list[Any]]:
        """The engine's batches of one streaming generation; failures become EngineErrors, as in `_generate_all`."""
        from model.async_engine import EngineClosed
        from model.engine import GenerationRequest

        batches = self._runner.stream(GenerationRequest(ids, params))
        timeout = self.config.request_timeout
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            while True:
                left = None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0)
                try:
                    batch = await asyncio.wait_for(anext(batches), left)
                except StopAsyncIteration:
                    return
                yield batch
        except TimeoutError:
            raise EngineError(f"the generation passed its deadline (request_timeout: {timeout} s)", 504,
                              "timeout") from None
        except EngineClosed:
            raise EngineError(_STOPPING, 503, "unavailable") from None
        except ValueError as exc:
            raise EngineError(f"invalid request: {exc}", 422, "invalid_request") from None
        finally:
            await batches.aclose()


async def _one(batch: list[Any]) -> AsyncIterator[list[Any]]:
    yield batch


def _nothing(prompt_ids: list[int], version: str) -> Any:
    """The empty generation of a prompt that already fills max_len."""
    from model.engine import GenerationResult

    return GenerationResult(request_id="", prompt_token_ids=prompt_ids, token_ids=[], logprobs=[],
                            finish_reason="length", text="", weights_version=version)
