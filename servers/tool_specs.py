"""Tools from type hints: `@tool` marks a server method; `tool_spec` builds its argument model and its OpenAI
function-tool schema from the signature and the docstring's `Args:`."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

__all__ = ["RESERVED_NAMES", "ToolSpec", "tool", "tool_spec"]

# Routes of the resources-server base; a tool may not take one of these names.
RESERVED_NAMES = frozenset({"seed_session", "verify", "aggregate_metrics", "tools", "health", "mcp"})


@dataclass(frozen=True)
class ToolSpec:
    """A tool method with its argument model and its OpenAI function-tool schema."""

    name: str
    method_name: str
    arguments: type[BaseModel]
    schema: dict[str, Any]
    takes_session: bool


def tool(fn: Callable | None = None, *, name: str | None = None) -> Any:
    """Mark a server method as a tool served at `POST /<name>`; its schema comes from its type hints."""

    def mark(method: Callable) -> Callable:
        method.__gym_tool__ = name or method.__name__  # type: ignore[attr-defined]
        return method

    return mark(fn) if fn is not None else mark


def tool_spec(method: Callable, name: str) -> ToolSpec:
    """Build a tool's argument model and schema from its signature (minus `self` and `session`)."""
    if name in RESERVED_NAMES or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise TypeError(f"tool name {name!r} is reserved or not a valid route name")
    hints = typing.get_type_hints(method, include_extras=True)
    description, param_docs = _parse_docstring(inspect.getdoc(method) or "")
    fields: dict[str, Any] = {}
    params = list(inspect.signature(method).parameters.values())[1:]
    for param in params:
        if param.name == "session":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"tool {name!r}: parameter {param.name!r} must be a plain named parameter")
        if param.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    parameters = _strip_titles(model.model_json_schema())
    for pname, doc in param_docs.items():
        parameters.get("properties", {}).get(pname, {}).setdefault("description", doc)
    # `strict` is required by the Responses API's function tool (and NeMo Gym's models); it is true only where
    # the schema meets strict mode's rules: no extra keys, every parameter required.
    strict = parameters.get("additionalProperties") is False and \
        set(parameters.get("required", [])) == set(parameters.get("properties", {}))
    schema = {"type": "function", "name": name, "description": description, "parameters": parameters,
              "strict": strict}
    return ToolSpec(name, method.__name__, model, schema, any(p.name == "session" for p in params))


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into the description and the `Args:` entries."""
    head, _, args = doc.partition("\nArgs:\n")
    params = dict(re.findall(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", args, flags=re.M))
    return head.strip(), params


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's generated `title` keys: noise in a prompt (a property named "title" survives)."""
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


