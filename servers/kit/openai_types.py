"""A task row's request checked against the official `openai` SDK's Responses types (needs `pip install openai`).

NeMo Gym's models derive from these types and reject a row that does not fit them. pydantic validates the SDK's
`Iterable` fields (input items, tools) lazily, so `check_request` reads every item; it checks each function tool
on its own first, so a missing `strict` is reported as that rather than as a mismatch with every tool type, and
keys the SDK does not know (which a TypedDict ignores) are refused.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from openai.types.responses import FunctionToolParam
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from pydantic import TypeAdapter

_REQUEST = TypeAdapter(ResponseCreateParamsNonStreaming)
_FUNCTION_TOOL = TypeAdapter(FunctionToolParam)
_FUNCTION_TOOL_KEYS = frozenset(typing.get_type_hints(FunctionToolParam))


def check_request(params: dict[str, Any]) -> dict[str, Any]:
    """`params` (a row's `responses_create_params`) as the SDK reads it, every item validated; raises
    pydantic's ValidationError or ValueError naming what does not fit."""
    for tool in params.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            _FUNCTION_TOOL.validate_python(tool)
            unknown = set(tool) - _FUNCTION_TOOL_KEYS
            if unknown:
                raise ValueError(f"function tool {tool.get('name')!r} has keys the SDK does not know: "
                                 f"{', '.join(sorted(unknown))}")
    return read_lazy(_REQUEST.validate_python(params))


def read_lazy(value: Any) -> Any:
    """`value` with every lazily validated iterable read (so each of its items is validated) into a list."""
    if isinstance(value, Iterator):  # pydantic's lazy validator of an `Iterable` field
        return [read_lazy(item) for item in value]
    if isinstance(value, dict):
        return {key: read_lazy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [read_lazy(item) for item in value]
    return value
