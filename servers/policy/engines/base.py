"""The engine interface the policy server runs on, and how an `engine:` name finds its class.

An engine turns a chat-completions request into a completion. It owns everything model-specific (upstream
URLs, weights, tokenizer); the policy server owns HTTP and the Responses conversion. A new engine (the
native torch model, vLLM in-process) is a class with `config_model` and `chat`, plus one line in `ENGINES`.
Engines that own a tokenizer (or front one) also implement `complete` (raw prompt in, text and ids out) and
`tokenize`; the others answer those routes with a 501 that names the engines that do. Streaming (`chat_stream`)
and live weight updates (`update_weights`, `model_version`) are optional the same way.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gym_core.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    TokenizeRequest,
    TokenizeResponse,
)

# engine name -> "module:Class"; imported only when chosen, so torch/vLLM load only for the engines using them.
ENGINES: dict[str, str] = {
    "scripted": "servers.policy.engines.scripted:ScriptedEngine",
    "openai": "servers.policy.engines.openai:OpenAIEngine",
    "vllm": "servers.policy.engines.vllm:VLLMEngine",
    "native": "servers.policy.engines.native:NativeEngine",
}


class EngineConfig(BaseModel):
    """Settings an engine reads from the policy server's config block (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None  # the model name served; defaults to the policy server's instance name


class EngineError(Exception):
    """A generation that failed; the policy server answers `status` with this message."""

    def __init__(self, message: str, status: int = 502, error_type: str = "engine_error") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class WeightSource:
    """New weights for an engine: a safetensors file or Hugging Face checkpoint directory, or safetensors bytes."""

    path: str | None = None
    data: bytes | None = None
    version: str | None = None  # the caller's label for the new weights; None: the engine picks the next one


class Engine(ABC):
    """Generates chat completions for the policy server."""

    config_model: ClassVar[type[EngineConfig]] = EngineConfig
    # Whether `chat` answers n > 1 choices; the policy server refuses n > 1 (422) for engines that do not.
    supports_n: ClassVar[bool] = False

    def __init__(self, config: EngineConfig, model_name: str) -> None:
        self.config = config
        self.model_name = model_name
        # The served weights' version, on every response (X-Model-Version); it changes with each weight update.
        self.model_version = "0"

    async def start(self) -> None:
        """Open clients or load weights (called once, before the first request)."""

    async def close(self) -> None:
        """Release what `start` opened."""

    @abstractmethod
    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """One completion for `request`; `session_id` identifies the rollout (for sticky routing or caches)."""

    async def complete(self, request: CompletionRequest, *, session_id: str | None = None) -> CompletionResponse:
        """A legacy completion of a raw prompt (text or token ids), without any chat template."""
        raise self._unsupported("/v1/completions")

    async def tokenize(self, request: TokenizeRequest, *, session_id: str | None = None) -> TokenizeResponse:
        """The token ids of a conversation as the chat template renders it, or of a plain prompt."""
        raise self._unsupported("/tokenize")

    def chat_stream(self, request: ChatCompletionRequest, *,
                    session_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """`chat.completion.chunk` objects as the completion is generated; the last one carries `usage`."""
        raise EngineError(f"the {type(self).__name__} engine does not stream; send stream: false", 422,
                          "invalid_request")

    async def update_weights(self, source: WeightSource) -> str:
        """Serve new weights from the next admitted request on (running ones are not dropped); the new version."""
        raise EngineError(f"the {type(self).__name__} engine has no weights to update; use engine: native, or "
                          "engine: openai/vllm in front of a vLLM with weight transfer", 501, "not_implemented")

    def _unsupported(self, route: str) -> EngineError:
        return EngineError(f"the {type(self).__name__} engine has no tokenizer, so it does not serve {route}; "
                           "use engine: native or engine: openai (a vLLM upstream) for it", 501, "not_implemented")


def create_engine(name: str, config: dict[str, Any], model_name: str) -> Engine:
    """Instantiate the engine registered as `name` from the policy server's config block."""
    target = ENGINES.get(name) or (name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown policy engine {name!r}; available: {', '.join(ENGINES)} (or 'module:Class')")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise TypeError(f"{target} is not an Engine subclass")
    engine_config = cls.config_model.model_validate(config)
    return cls(engine_config, engine_config.model or model_name)

