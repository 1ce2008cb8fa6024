"""The policy server: OpenAI-compatible routes over a pluggable engine chosen by `engine:` in its config."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, SecretStr, ValidationError

from gym_core.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseCreateParams,
    TokenizeRequest,
    WireModel,
    loads,
)
from gym_core.server import (
    GymServer,
    JSONResponse,
    ServerConfig,
    describe_validation_error,
    error_response,
    session_id_of,
)
from servers.policy.convert import ConversionError, chat_to_response, responses_to_chat
from servers.policy.engines.base import Engine, EngineError, create_engine


class PolicyConfig(ServerConfig):
    """The policy block: `engine:` picks the engine; the engine reads its own keys from the same block."""

    engine: str = "scripted"
    model: str | None = None
    api_key: SecretStr | None = None  # declared here so the validated config never holds it in plain text


class PolicyServer(GymServer):
    """`POST /v1/chat/completions`, `/v1/responses`, `/v1/completions`, `/tokenize`, `GET /v1/models` over one engine.

    The rollout's session (the `X-Session-Id` header, or for NeMo Gym agents the session cookie this server
    set) is handed to the engine, which may use it to keep a rollout on one replica.
    """

    kind: ClassVar[str] = "policy"
    config_model: ClassVar[type[BaseModel]] = PolicyConfig

    def __init__(self, name: str, config: dict[str, Any] | BaseModel | None = None) -> None:
        super().__init__(name, config)
        self.engine: Engine = create_engine(self.config.engine, self.config.model_dump(), name)
        self._created = int(time.time())  # `created` of the served model (the SDK's Model requires it)

    async def startup(self) -> None:
        """Start the engine."""
        await self.engine.start()

    async def shutdown(self) -> None:
        """Stop the engine."""
        await self.engine.close()

    def add_routes(self, app: FastAPI) -> None:
        """Register the OpenAI-compatible routes."""
        app.add_api_route("/v1/chat/completions", self._chat_route, methods=["POST"])
        app.add_api_route("/v1/responses", self._responses_route, methods=["POST"])
        app.add_api_route("/v1/completions", self._completions_route, methods=["POST"])
        # vLLM serves /tokenize at the root, not under /v1; clients written for it find ours there too.
        app.add_api_route("/tokenize", self._tokenize_route, methods=["POST"])
        app.add_api_route("/v1/models", self._models_route, methods=["GET"])

    async def _chat_route(self, request: Request) -> JSONResponse:
        return await _serve(request, ChatCompletionRequest, self.engine.chat)

    async def _completions_route(self, request: Request) -> JSONResponse:
        return await _serve(request, CompletionRequest, self.engine.complete)

    async def _tokenize_route(self, request: Request) -> JSONResponse:
        return await _serve(request, TokenizeRequest, self.engine.tokenize)

    async def _responses_route(self, request: Request) -> JSONResponse:
        try:
            params = ResponseCreateParams.model_validate(loads(await request.body()))
            if (params.model_extra or {}).get("stream"):
                return error_response(422, "streaming is not supported; send stream: false")
            chat = responses_to_chat(params)
        except (ValidationError, ValueError) as err:  # ConversionError is a ValueError
            return _invalid(err)
        try:
            completion = await self.engine.chat(chat, session_id=session_id_of(request))
        except EngineError as err:
            return error_response(err.status, str(err), err.error_type)
        return JSONResponse(chat_to_response(completion, params))

    async def _models_route(self) -> dict[str, Any]:
        model = {"id": self.engine.model_name, "object": "model", "created": self._created, "owned_by": "gym"}
        return {"object": "list", "data": [model]}


async def _serve(request: Request, schema: type[WireModel],
                 engine_method: Callable[..., Awaitable[WireModel]]) -> JSONResponse:
    """Validate the body into `schema`, hand it to the engine, and answer its result or its error."""
    try:
        body = schema.model_validate(loads(await request.body()))
    except (ValidationError, ValueError) as err:
        return _invalid(err)
    try:
        result = await engine_method(body, session_id=session_id_of(request))
    except EngineError as err:
        return error_response(err.status, str(err), err.error_type)
    return JSONResponse(result)


def _invalid(err: Exception) -> JSONResponse:
    if isinstance(err, ValidationError):
        return error_response(422, describe_validation_error(err))
    if isinstance(err, ConversionError):
        return error_response(422, str(err))
    return error_response(422, f"body is not JSON ({err})")
