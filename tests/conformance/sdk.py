"""Checks against the official `openai` SDK's types, the ones NeMo Gym's models derive from.

Each `check_*` validates a JSON value as the SDK would parse it and raises pydantic's ValidationError (naming
the field) when it does not fit. The SDK's request params are TypedDicts whose list fields are `Iterable`s,
which pydantic validates lazily, so `check_create_params` walks them to validate every item too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from pydantic import TypeAdapter

_CREATE_PARAMS = TypeAdapter(ResponseCreateParamsNonStreaming)


def check_response(value: dict[str, Any]) -> Response:
    """A Responses API object (policy /v1/responses, agent /v1/responses, the `response` of /run and /verify)."""
    return Response.model_validate(value)


def check_chat_completion(value: dict[str, Any]) -> ChatCompletion:
    """A chat completion."""
    return ChatCompletion.model_validate(value)


def check_chunk(value: dict[str, Any]) -> ChatCompletionChunk:
    """One streamed chat completion chunk."""
    return ChatCompletionChunk.model_validate(value)


def check_completion(value: dict[str, Any]) -> Completion:
    """A legacy completion."""
    return Completion.model_validate(value)


def check_models(value: dict[str, Any]) -> list[Model]:
    """The `GET /v1/models` list."""
    assert value["object"] == "list"
    return [Model.model_validate(entry) for entry in value["data"]]


def check_create_params(value: dict[str, Any]) -> dict[str, Any]:
    """A Responses create body (a task row's `responses_create_params`), every input item and tool included."""
    return _consume(_CREATE_PARAMS.validate_python(value))


def check_verify_response(value: dict[str, Any]) -> None:
    """What /verify and /run answer: the row's create params, the episode's Response, a numeric reward."""
    check_create_params(value["responses_create_params"])
    check_response(value["response"])
    assert isinstance(value["reward"], (int, float)) and not isinstance(value["reward"], bool)


def _consume(value: Any) -> Any:
    """`value` with every lazily validated iterable read (so each of its items is validated) into a list."""
    if isinstance(value, Iterator):  # pydantic's lazy validator of an `Iterable` field
        return [_consume(item) for item in value]
    if isinstance(value, dict):
        return {key: _consume(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_consume(item) for item in value]
    return value
