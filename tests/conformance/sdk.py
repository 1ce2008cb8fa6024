"""Checks against the official `openai` SDK's types, the ones NeMo Gym's models derive from.

Each `check_*` validates a JSON value as the SDK would parse it and raises pydantic's ValidationError (naming
the field) when it does not fit. Request params are checked by `gym env test`'s own check (every lazily
validated item read, function tools on their own), which tests/environments/test_data_rows.py runs on every row.
"""

from __future__ import annotations

from typing import Any

from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion
from openai.types.responses import Response

from servers.kit.openai_types import check_request


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


def check_verify_response(value: dict[str, Any]) -> None:
    """What /verify and /run answer: the row's create params, the episode's Response, a numeric reward."""
    check_request(value["responses_create_params"])
    check_response(value["response"])
    assert isinstance(value["reward"], (int, float)) and not isinstance(value["reward"], bool)

