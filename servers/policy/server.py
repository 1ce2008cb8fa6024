"""The policy server: OpenAI-compatible routes over a pluggable engine chosen by `engine:` in its config."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, SecretStr, ValidationError

from gym_core.protocol import (
    MODEL_VERSION_HEADER,
    MODEL_VERSION_PATTERN,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    ResponseCreateParams,
    TokenizeRequest,
    WeightsInfo,
    WeightUpdateRequest,
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
from servers.policy.engines.base import Engine, EngineError, WeightSource, create_engine


class PolicyConfig(ServerConfig):
    """The policy block: `engine:` picks the engine; the engine reads its own keys from the same block."""

    engine: str = "scripted"
    model: str | None = None
    api_key: SecretStr | None = None  # declared here so the validated config never holds it in plain text


class PolicyServer(GymServer):
    """`POST /v1/chat/completions`, `/v1/responses`, `/v1/completions`, `/tokenize`, `GET /v1/models` over one engine.

    The rollout's session (the `X-Session-Id` header, or for NeMo Gym agents the session cookie this server
    set) is handed to the engine, which may use it to keep a rollout on one replica. Every response carries
    the served weights' version in `X-Model-Version` (chat completions and Responses also in
    `metadata.model_version`); `POST /v1/weights` changes the weights, `GET /v1/weights` reports them.
    """

    kind: ClassVar[str] = "policy"
    config_model: ClassVar[type[BaseModel]] = PolicyConfig
    # Routes that change what the server serves: they need the stack's admin token (see gym_core's edge).
    admin_routes: ClassVar[tuple[tuple[str, str], ...]] = (("POST", "/v1/weights"),)

    def __init__(self, name: str, config: dict[str, Any] | BaseModel | None = None) -> None:
        super().__init__(name, config)
        self.engine: Engine = create_engine(self.config.engine, self.config.model_dump(), name)
        self.weights = WeightsInfo(model_version=self.engine.model_version, source=self.config.model)

    async def startup(self) -> None:
        """Start the engine."""
        await self.engine.start()
        self.weights = WeightsInfo(model_version=self.engine.model_version, source=self.config.model,
                                   loaded_at=time.time())

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
        app.add_api_route("/v1/weights", self._weights_route, methods=["GET"])
        app.add_api_route("/v1/weights", self._update_weights_route, methods=["POST"])

    async def _chat_route(self, request: Request) -> JSONResponse:
        try:
            body = ChatCompletionRequest.model_validate(loads(await request.body()))
        except (ValidationError, ValueError) as err:
            return self._versioned(_invalid(err))
        try:
            completion = await self.engine.chat(body, session_id=session_id_of(request))
        except EngineError as err:
            return self._versioned(error_response(err.status, str(err), err.error_type))
        version = self._stamp(completion)
        return self._versioned(JSONResponse(completion), version)

    async def _completions_route(self, request: Request) -> JSONResponse:
        return self._versioned(await _serve(request, CompletionRequest, self.engine.complete))

    async def _tokenize_route(self, request: Request) -> JSONResponse:
        return self._versioned(await _serve(request, TokenizeRequest, self.engine.tokenize))

    async def _responses_route(self, request: Request) -> JSONResponse:
        try:
            params = ResponseCreateParams.model_validate(loads(await request.body()))
            if (params.model_extra or {}).get("stream"):
                return self._versioned(error_response(422, "streaming is not supported; send stream: false"))
            chat = responses_to_chat(params)
        except (ValidationError, ValueError) as err:  # ConversionError is a ValueError
            return self._versioned(_invalid(err))
        try:
            completion = await self.engine.chat(chat, session_id=session_id_of(request))
        except EngineError as err:
            return self._versioned(error_response(err.status, str(err), err.error_type))
        version = self._stamp(completion)
        return self._versioned(JSONResponse(chat_to_response(completion, params)), version)

    async def _models_route(self, request: Request) -> JSONResponse:
        models = {"object": "list", "data": [{"id": self.engine.model_name, "object": "model", "owned_by": "gym"}]}
        return self._versioned(JSONResponse(models))

    async def _weights_route(self, request: Request) -> JSONResponse:
        """The weights being served: version, where they came from, since when."""
        self.weights.model_version = self.engine.model_version  # an upstream engine may learn of a change itself
        return self._versioned(JSONResponse(self.weights))

    async def _update_weights_route(self, request: Request) -> JSONResponse:
        """Load new weights: JSON `{"path", "version"}`, or the safetensors bytes with `X-Model-Version`."""
        try:
            source = await _weight_source(request)
        except (ValidationError, ValueError) as err:
            return self._versioned(_invalid(err))
        try:
            version = await self.engine.update_weights(source)
        except EngineError as err:
            return self._versioned(error_response(err.status, str(err), err.error_type))
        where = source.path if source.path is not None else f"upload ({len(source.data or b'')} bytes)"
        self.weights = WeightsInfo(model_version=version, source=where, loaded_at=time.time(),
                                   updates=self.weights.updates + 1)
        return self._versioned(JSONResponse(self.weights), version)

    def _stamp(self, completion: ChatCompletionResponse) -> str:
        """The version that produced `completion`, written into its metadata (the engine's, else the current)."""
        metadata = completion.metadata or {}
        version = metadata.get("model_version") or self.engine.model_version
        completion.metadata = {**metadata, "model_version": version}
        return version

    def _versioned(self, response: JSONResponse, version: str | None = None) -> JSONResponse:
        response.headers[MODEL_VERSION_HEADER] = version or self.engine.model_version
        return response


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


_VERSION_LABEL = re.compile(MODEL_VERSION_PATTERN)


class _BadWeightSource(ValueError):
    """A `POST /v1/weights` request that names no usable weights (answered 422 with this message)."""


async def _weight_source(request: Request) -> WeightSource:
    """The body of `POST /v1/weights` as a WeightSource; ValueError (or ValidationError) says what is wrong."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        label = request.headers.get(MODEL_VERSION_HEADER)
        if label is not None and not _VERSION_LABEL.fullmatch(label):
            raise _BadWeightSource(f"{MODEL_VERSION_HEADER} must be 1-128 visible ASCII characters, no spaces")
        return WeightSource(data=await request.body(), version=label)
    body = WeightUpdateRequest.model_validate(loads(await request.body()))
    return WeightSource(path=body.path, version=body.version)


def _invalid(err: Exception) -> JSONResponse:
    if isinstance(err, ValidationError):
        return error_response(422, describe_validation_error(err))
    if isinstance(err, (ConversionError, _BadWeightSource)):
        return error_response(422, str(err))
    return error_response(422, f"body is not JSON ({err})")
