"""Forward chat completions to OpenAI-compatible upstreams (`vllm serve`, OpenAI, ...), sticky per rollout.

With several replicas in `base_url`, a rollout's requests all go to the replica picked by a hash of its
session id, so an upstream prefix cache keeps serving the same conversation (NeMo Gym does the same).
"""

from __future__ import annotations

import hashlib
import itertools
import re

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator

from gym_core.protocol import ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, dumps, loads
from servers.policy.engines.base import Engine, EngineConfig, EngineError

TOKEN_FIELDS = frozenset({"prompt_token_ids", "generation_token_ids", "generation_log_probs"})


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

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class OpenAIEngine(Engine):
    """Sends each request to one upstream `/chat/completions` and returns its answer."""

    config: OpenAIEngineConfig
    config_model = OpenAIEngineConfig

    def __init__(self, config: OpenAIEngineConfig, model_name: str) -> None:
        super().__init__(config, model_name)
        self._urls = [url.rstrip("/") + "/chat/completions" for url in config.base_url]
        self._round_robin = itertools.cycle(range(len(self._urls)))
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
        """The upstream URL for a session: stable per session id, round-robin without one."""
        if session_id is None:
            return self._urls[next(self._round_robin)]
        digest = hashlib.sha256(session_id.encode()).digest()
        return self._urls[int.from_bytes(digest[:8], "big") % len(self._urls)]

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Forward the request (model name and `extra_body` applied) and validate the answer."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = {**self.config.extra_body, **request.model_dump(mode="json", exclude_unset=True),
                "model": self.config.model or request.model or self.model_name}
        if not self.config.forward_token_ids:
            body["messages"] = [{k: v for k, v in m.items() if k not in TOKEN_FIELDS} for m in body["messages"]]
        url = self.replica_for(session_id)
        try:
            reply = await self._client.post(url, content=dumps(body))
        except httpx.TimeoutException:
            raise EngineError(f"upstream {url} did not answer within {self.config.timeout_s} s", 504,
                              "upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise EngineError(f"upstream {url} unreachable: {type(exc).__name__}: {exc}", 502,
                              "upstream_unreachable") from None
        if reply.status_code == 400 and _CONTEXT_OVERFLOW.search(reply.text):
            # The conversation outgrew the model: an episode that ends here, not an infrastructure failure.
            return ChatCompletionResponse(model=body["model"], choices=[
                ChatChoice(message=ChatMessage(role="assistant", content=""), finish_reason="length")])
        if reply.status_code >= 400:
            # Any other 4xx is the caller's request (bad parameters): pass it on as such.
            status = reply.status_code if reply.status_code < 500 else 502
            raise EngineError(f"upstream {url} answered {reply.status_code}: {reply.text[:500]}", status,
                              "upstream_error")
        try:
            return ChatCompletionResponse.model_validate(loads(reply.content))
        except (ValueError, ValidationError) as exc:
            raise EngineError(f"upstream {url} sent an invalid chat completion: {str(exc)[:500]}", 502,
                              "upstream_error") from None
