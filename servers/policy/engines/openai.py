"""Forward chat and legacy completions (and vLLM's `/tokenize`) to OpenAI-compatible upstreams, sticky per rollout.

With several replicas in `base_url`, a rollout's requests all go to the replica picked by a hash of its
session id, so an upstream prefix cache keeps serving the same conversation (NeMo Gym does the same).
For training (`return_token_ids: true`) the upstream must be vLLM: it is asked for token ids and log-probs
as NeMo Gym's vllm_model asks (`vllm_tokens`), and every generation carries the token fields.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator

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
    dumps,
    loads,
)
from servers.policy.engines import vllm_tokens
from servers.policy.engines.base import Engine, EngineConfig, EngineError

# How vLLM and OpenAI word "the prompt plus max_tokens exceed the context window".
_CONTEXT_OVERFLOW = re.compile(r"context length|context window|maximum context|max_tokens.*too large", re.I)


class OpenAIEngineConfig(EngineConfig):
    """Upstream replicas and credentials; `api_key` is a secret and never printed."""

    base_url: list[str] = Field(min_length=1)  # e.g. http://127.0.0.1:8000/v1; a single string is accepted
    api_key: SecretStr | None = None
    timeout_s: float = 600.0
    max_connections: int = 1024
    extra_body: dict = Field(default_factory=dict)  # defaults for every upstream request (e.g. vLLM's top_k)
    # Send the token fields of earlier turns back on the assistant messages (for a vLLM that splices prefix
    # ids, as NeMo Gym's on-policy correction does); off by default: other upstreams reject unknown keys.
    forward_token_ids: bool = False
    # Training: ask a vLLM upstream for token ids and log-probs and put the token fields on every generation.
    return_token_ids: bool = False

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
        self._bases = [url.rstrip("/") for url in config.base_url]
        self._round_robin = itertools.cycle(range(len(self._bases)))
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the keep-alive client."""
        headers = {"Content-Type": "application/json"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        limits = httpx.Limits(max_connections=self.config.max_connections,
                              max_keepalive_connections=self.config.max_connections)
        self._client = httpx.AsyncClient(headers=headers, limits=limits,
                                         timeout=httpx.Timeout(self.config.timeout_s, connect=10.0))

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def replica_for(self, session_id: str | None) -> str:
        """The upstream base URL for a session: stable per session id, round-robin without one."""
        if session_id is None:
            return self._bases[next(self._round_robin)]
        digest = hashlib.sha256(session_id.encode()).digest()
        return self._bases[int.from_bytes(digest[:8], "big") % len(self._bases)]

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Forward the request (model name and `extra_body` applied) and validate the answer."""
        body = self._body(request)
        body["messages"] = self._messages(body["messages"])
        training = self.config.return_token_ids
        if training:
            body.update(vllm_tokens.CHAT_TRAINING_KEYS)
        reply = await self._post(self.replica_for(session_id) + "/chat/completions", body)
        if reply is None:  # the conversation outgrew the model: an episode that ends here
            return ChatCompletionResponse(model=body["model"], choices=[
                ChatChoice(message=ChatMessage(role="assistant", content=""), finish_reason="length")])
        if training:
            asked = bool(request.logprobs)  # the client's own logprobs stay
            tokens = self._take(vllm_tokens.take_chat_tokens, reply, asked)
            if tokens.prompt is None:
                tokens.prompt = await self._prompt_ids(request, session_id)
            reply["choices"][0]["message"].update(tokens.fields())
        return _validated(ChatCompletionResponse, reply, "chat completion")

    async def complete(self, request: CompletionRequest, *, session_id: str | None = None) -> CompletionResponse:
        """Forward a legacy completion; with `return_token_ids` its choice carries the token fields."""
        body = self._body(request)
        training = self.config.return_token_ids
        if training:
            body.update({**vllm_tokens.COMPLETION_TRAINING_KEYS, "logprobs": request.logprobs or 0})
        reply = await self._post(self.replica_for(session_id) + "/completions", body)
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
        reply = await self._post(self.replica_for(session_id).removesuffix("/v1") + "/tokenize", body)
        if reply is None:
            raise EngineError("the upstream says the prompt is longer than the model's context", 400, "bad_request")
        return _validated(TokenizeResponse, reply, "tokenize answer")

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

    async def _prompt_ids(self, request: ChatCompletionRequest, session_id: str | None) -> list[int]:
        """The prompt's ids from the upstream's `/tokenize`, for an upstream that did not return them inline."""
        tokenize = TokenizeRequest(messages=request.messages, tools=request.tools,
                                   chat_template_kwargs=(request.model_extra or {}).get("chat_template_kwargs"))
        return (await self.tokenize(tokenize, session_id=session_id)).tokens

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST `body` and return the JSON answer; None when the upstream says the context is exceeded."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            reply = await self._client.post(url, content=dumps(body))
        except httpx.TimeoutException:
            raise EngineError(f"upstream {url} did not answer within {self.config.timeout_s} s", 504,
                              "upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise EngineError(f"upstream {url} unreachable: {type(exc).__name__}: {exc}", 502,
                              "upstream_unreachable") from None
        if reply.status_code == 400 and _CONTEXT_OVERFLOW.search(reply.text):
            return None
        if reply.status_code >= 400:
            # Any other 4xx is the caller's request (bad parameters): pass it on as such.
            status = reply.status_code if reply.status_code < 500 else 502
            raise EngineError(f"upstream {url} answered {reply.status_code}: {reply.text[:500]}", status,
                              "upstream_error")
        try:
            data = loads(reply.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EngineError(f"upstream {url} sent no JSON object: {reply.text[:200]}", 502, "upstream_error")
        return data


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
