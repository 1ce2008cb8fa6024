"""Forward chat and legacy completions (and vLLM's `/tokenize`) to OpenAI-compatible upstreams, sticky per rollout.

Requests go through the process's one HTTP client (`gym_core.client`: aiohttp pool, a timeout on every call,
retries only for connections never made). With several replicas in `base_url`, a rollout's requests all go to
the replica picked by a hash of its session id, so an upstream prefix cache keeps serving the same conversation
(NeMo Gym does the same). For training (`return_token_ids: true`) the upstream must be vLLM: it is asked for
token ids and log-probs as NeMo Gym's vllm_model asks (`vllm_tokens`), and every generation carries the token
fields. Streaming passes the upstream's chunks through as they come; reasoning controls are put in vLLM's
form (`reasoning`); new weights go through vLLM's weight-transfer routes (`vllm_weights`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator

from gym_core.client import aiter_sse, get_client
from gym_core.protocol import (
    TOKEN_FIELDS,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    TokenizeRequest,
    TokenizeResponse,
    WireModel,
    loads,
)
from servers.policy.engines import reasoning, vllm_tokens
from servers.policy.engines.base import Engine, EngineConfig, EngineError, WeightSource
from servers.policy.engines.vllm_weights import VLLMWeightUpdater, next_version

# How vLLM and OpenAI word "the prompt plus max_tokens exceed the context window".
_CONTEXT_OVERFLOW = re.compile(r"context length|context window|maximum context|max_tokens.*too large", re.I)


class OpenAIEngineConfig(EngineConfig):
    """Upstream replicas and credentials; `api_key` is a secret and never printed."""

    base_url: list[str] = Field(min_length=1)  # e.g. http://127.0.0.1:8000/v1; a single string is accepted
    api_key: SecretStr | None = None
    timeout_s: float = 600.0
    extra_body: dict = Field(default_factory=dict)  # defaults for every upstream request (e.g. vLLM's top_k)
    # Send the token fields of earlier turns back on the assistant messages (for a vLLM that splices prefix
    # ids, as NeMo Gym's on-policy correction does); off by default: other upstreams reject unknown keys.
    forward_token_ids: bool = False
    # Training: ask a vLLM upstream for token ids and log-probs and put the token fields on every generation.
    return_token_ids: bool = False
    # Reasoning defaults for requests that do not set them (Nemotron 3 on vLLM; see `reasoning`).
    enable_thinking: bool | None = None
    thinking_budget: int | None = Field(None, ge=0)
    thinking_grace: int | None = Field(None, ge=0)
    # Weight updates (POST /v1/weights) through vLLM's weight transfer: where uploaded bytes are written for
    # vLLM to read (a directory both hosts see; default a temporary one), and how long a load may take.
    weights_staging_dir: str | None = None
    weights_timeout_s: float = 1800.0

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class OpenAIEngine(Engine):
    """Sends each request to one upstream's `/chat/completions` (`/completions`, `/tokenize`) and returns its answer.

    `/tokenize` is at the upstream's root, not under `/v1`, as vLLM serves it. With `return_token_ids` the
    upstream is asked for token ids and log-probs (see `vllm_tokens`); a prompt whose ids it did not return
    is tokenized by the same upstream.
    """

    config: OpenAIEngineConfig
    config_model = OpenAIEngineConfig

    def __init__(self, config: OpenAIEngineConfig, model_name: str) -> None:
        super().__init__(config, model_name)
        self._set_upstreams(config.base_url)
        self._headers = {"content-type": "application/json"}
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._weights: VLLMWeightUpdater | None = None

    def _set_upstreams(self, base_urls: list[str]) -> None:
        self._bases = [url.rstrip("/") for url in base_urls]
        self._round_robin = itertools.cycle(range(len(self._bases)))

    async def close(self) -> None:
        """Remove staged weights (the HTTP client is the process's, closed with it)."""
        if self._weights is not None:
            self._weights.close()

    def replica_for(self, session_id: str | None) -> str:
        """The upstream base URL for a session: stable per session id, round-robin without one."""
        if session_id is None:
            return self._bases[next(self._round_robin)]
        digest = hashlib.sha256(session_id.encode()).digest()
        return self._bases[int.from_bytes(digest[:8], "big") % len(self._bases)]

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Forward the request (model name and `extra_body` applied) and validate the answer."""
        body = self._chat_body(request)
        reply = await self._post(self.replica_for(session_id), "/chat/completions", body)
        if reply is None:  # the conversation outgrew the model: an episode that ends here
            return ChatCompletionResponse(model=body["model"], choices=[
                ChatChoice(message=ChatMessage(role="assistant", content=""), finish_reason="length")])
        for choice in reply.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                reasoning.normalize(choice["message"])
        if self.config.return_token_ids:
            tokens = self._take(vllm_tokens.take_chat_tokens, reply, _asked_logprobs(request))
            if tokens.prompt is None:
                tokens.prompt = await self._prompt_ids(request, session_id)
            reply["choices"][0]["message"].update(tokens.fields())
        return _validated(ChatCompletionResponse, reply, "chat completion")

    async def chat_stream(self, request: ChatCompletionRequest, *,
                          session_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The upstream's `chat.completion.chunk`s as they arrive; usage on the last (asked with include_usage)."""
        body = self._chat_body(request)
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        training = vllm_tokens.StreamTokens() if self.config.return_token_ids else None
        keep_logprobs = _asked_logprobs(request)
        base = self.replica_for(session_id)
        try:
            async with get_client().stream("POST", base, "/chat/completions", body, headers=self._headers,
                                           timeout=self.config.timeout_s) as response:
                if response.status_code >= 400:
                    await _overflow_or_raise(base + "/chat/completions", response)
                    yield _length_chunk(body["model"])
                    return
                async for data in aiter_sse(response):
                    if data == "[DONE]":
                        break
                    chunk = _chunk(data, base)
                    for choice in chunk.get("choices") or []:
                        reasoning.normalize(choice.get("delta") or {})
                    if training is not None:
                        await self._add_stream_tokens(training, chunk, keep_logprobs, request, session_id)
                    yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(base + "/chat/completions", exc, self.config.timeout_s) from None

    async def complete(self, request: CompletionRequest, *, session_id: str | None = None) -> CompletionResponse:
        """Forward a legacy completion; with `return_token_ids` its choice carries the token fields."""
        body = self._body(request)
        training = self.config.return_token_ids
        if training:
            body.update({**vllm_tokens.COMPLETION_TRAINING_KEYS, "logprobs": request.logprobs or 0})
        reply = await self._post(self.replica_for(session_id), "/completions", body)
        if reply is None:
            return CompletionResponse(model=body["model"], choices=[CompletionChoice(text="", finish_reason="length")])
        if training:
            tokens = self._take(vllm_tokens.take_completion_tokens, reply, request.logprobs is not None)
            if tokens.prompt is None:
                tokens.prompt = request.prompt if isinstance(request.prompt, list) else (
                    await self.tokenize(TokenizeRequest(prompt=request.prompt), session_id=session_id)).tokens
            reply["choices"][0].update(tokens.fields())
        elif _vllm_prompt_ids_only(reply):
            # vLLM's own return_token_ids, asked for by the client: lifted off the choice, where the token
            # fields go all three or none, to the top level, where vLLM's chat completions put them.
            reply["prompt_token_ids"] = reply["choices"][0].pop("prompt_token_ids")
        return _validated(CompletionResponse, reply, "completion")

    async def tokenize(self, request: TokenizeRequest, *, session_id: str | None = None) -> TokenizeResponse:
        """Forward to the upstream's `/tokenize` (at its root: a trailing `/v1` of `base_url` is dropped)."""
        body = self._body(request)
        if "messages" in body:
            body["messages"] = self._messages(body["messages"])
        reply = await self._post(self.replica_for(session_id).removesuffix("/v1"), "/tokenize", body)
        if reply is None:
            raise EngineError("the upstream says the prompt is longer than the model's context", 400, "bad_request")
        return _validated(TokenizeResponse, reply, "tokenize answer")

    async def update_weights(self, source: WeightSource) -> str:
        """Load new weights into every vLLM replica through its weight-transfer routes; the new version."""
        if self._weights is None:
            roots = [base.removesuffix("/v1") for base in self._bases]
            self._weights = VLLMWeightUpdater(roots, self._headers, self.config.weights_timeout_s,
                                              self.config.weights_staging_dir)
        version = source.version or next_version(self.model_version)
        await self._weights.update(source, version)
        self.model_version = version
        return version

    def _chat_body(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """A chat request as the upstream's body: history without token fields, vLLM's reasoning keys."""
        body = self._body(request)
        body["messages"] = self._messages(body["messages"])
        reasoning.apply(body, self.config.enable_thinking, self.config.thinking_budget, self.config.thinking_grace)
        if self.config.return_token_ids:
            body.update(vllm_tokens.CHAT_TRAINING_KEYS)
        return body

    def _body(self, request: WireModel) -> dict[str, Any]:
        """The request as the upstream's JSON body: `extra_body` defaults under it, the served model name set."""
        sent = request.model_dump(mode="json", exclude_unset=True)
        return {**self.config.extra_body, **sent, "model": self.config.model or sent.get("model") or self.model_name}

    def _messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.config.forward_token_ids:
            return messages
        return [{k: v for k, v in m.items() if k not in TOKEN_FIELDS} for m in messages]

    def _take(self, take: Callable[..., vllm_tokens.Tokens], reply: dict[str, Any],
              keep_logprobs: bool) -> vllm_tokens.Tokens:
        """`take(reply)`, with an answer lacking the tokens (or not shaped like a completion) as a 502."""
        try:
            return take(reply, keep_logprobs=keep_logprobs)
        except (vllm_tokens.MissingTokens, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise EngineError(f"return_token_ids: {exc}", 502, "upstream_error") from None

    async def _add_stream_tokens(self, tokens: vllm_tokens.StreamTokens, chunk: dict[str, Any],
                                 keep_logprobs: bool, request: ChatCompletionRequest,
                                 session_id: str | None) -> None:
        """Gather a chunk's ids; on the finishing chunk, put the three token fields on its delta."""
        tokens.take(chunk, keep_logprobs=keep_logprobs)
        choices = chunk.get("choices") or []
        if not (choices and choices[0].get("finish_reason")):
            return
        try:
            gathered = tokens.tokens()
        except vllm_tokens.MissingTokens as exc:
            raise EngineError(f"return_token_ids: {exc}", 502, "upstream_error") from None
        if gathered.prompt is None:
            gathered.prompt = await self._prompt_ids(request, session_id)
        choices[0].setdefault("delta", {}).update(gathered.fields())

    async def _prompt_ids(self, request: ChatCompletionRequest, session_id: str | None) -> list[int]:
        """The prompt's ids from the upstream's `/tokenize`, for an upstream that did not return them inline."""
        tokenize = TokenizeRequest(messages=request.messages, tools=request.tools,
                                   chat_template_kwargs=(request.model_extra or {}).get("chat_template_kwargs"))
        return (await self.tokenize(tokenize, session_id=session_id)).tokens

    async def _post(self, base: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST `body` and return the JSON answer; None when the upstream says the context is exceeded."""
        url = base + path
        try:
            reply = await get_client().post(base, path, body, headers=self._headers, timeout=self.config.timeout_s)
        except httpx.HTTPError as exc:
            raise _transport_error(url, exc, self.config.timeout_s) from None
        if reply.status_code >= 400:
            await _overflow_or_raise(url, reply)
            return None
        try:
            data = loads(reply.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EngineError(f"upstream {url} sent no JSON object: {reply.text[:200]}", 502, "upstream_error")
        return data


async def _overflow_or_raise(url: str, reply: httpx.Response) -> None:
    """Return for the upstream's "context exceeded" 400; any other error status raises EngineError."""
    text = (await reply.aread()).decode(errors="replace")
    if reply.status_code == 400 and _CONTEXT_OVERFLOW.search(text):
        return
    # Any other 4xx is the caller's request (bad parameters): pass it on as such.
    status = reply.status_code if reply.status_code < 500 else 502
    raise EngineError(f"upstream {url} answered {reply.status_code}: {text[:500]}", status, "upstream_error")


def _asked_logprobs(request: ChatCompletionRequest) -> bool:
    """Whether the client asked for log-probs itself (then vLLM's stay on the answer)."""
    return bool(request.logprobs)


def _transport_error(url: str, exc: httpx.HTTPError, timeout_s: float) -> EngineError:
    if isinstance(exc, httpx.TimeoutException):
        return EngineError(f"upstream {url} did not answer within {timeout_s:g} s", 504, "upstream_timeout")
    return EngineError(f"upstream {url} unreachable: {type(exc).__name__}: {exc}", 502, "upstream_unreachable")


def _chunk(data: str, base: str) -> dict[str, Any]:
    try:
        chunk = loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise EngineError(f"upstream {base} streamed an event that is not a JSON object: {data[:200]}", 502,
                          "upstream_error")
    return chunk


def _length_chunk(model: str) -> dict[str, Any]:
    """The one chunk of a stream whose prompt already fills the context: nothing generated, cut for length."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "length"}]}


def _vllm_prompt_ids_only(reply: dict[str, Any]) -> bool:
    choices = reply.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    return "prompt_token_ids" in first and "generation_token_ids" not in first


def _validated(schema: type[WireModel], data: dict[str, Any], what: str) -> Any:
    """`data` as `schema`; an answer that does not fit is the upstream's failure (502)."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise EngineError(f"the upstream sent an invalid {what}: {str(exc)[:500]}", 502, "upstream_error") from None
