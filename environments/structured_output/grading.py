"""Field-level grading of a JSON document against a task's JSON Schema (and expected values, when given)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

_MISSING = object()


@dataclass(frozen=True)
class Field:
    """A leaf of the schema: its path of property names, its subschema, whether the path is required."""

    path: tuple[str, ...]
    schema: dict[str, Any]
    required: bool


def schema_validator(schema: dict[str, Any]) -> Any:
    """A validator for the task's schema (its own draft, formats checked); ValueError if the schema is invalid."""
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
    except SchemaError as err:
        raise ValueError(f"the row's `schema` is not a valid JSON Schema: {err.message}") from None
    return cls(schema, format_checker=FormatChecker())


def fields_of(schema: dict[str, Any], path: tuple[str, ...] = (), required: bool = True) -> list[Field]:
    """The leaf fields: properties of nested objects are walked into; anything else is one field."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return [Field(path, schema if isinstance(schema, dict) else {}, required)] if path else []
    needed = set(schema.get("required", []))
    return [leaf for name, sub in properties.items()
            for leaf in fields_of(sub, (*path, name), required and name in needed)]


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return _MISSING
        document = document[key]
    return document


def same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, `1` is `1.0`; lists in order, objects by key."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def grade(document: Any, validator: Any, expected: Any = _MISSING) -> dict[str, Any]:
    """Per-field correctness, whole-document validity, and reward = (fields right + valid) / (fields + 1)."""
    fields = fields_of(validator.schema)
    results = []
    for field in fields:
        value = _lookup(document, field.path)
        want = _MISSING if expected is _MISSING else _lookup(expected, field.path)
        if value is _MISSING:
            ok = not field.required and want is _MISSING
        else:
            ok = validator.evolve(schema=field.schema).is_valid(value) and (want is _MISSING or same(value, want))
        results.append({"field": ".".join(field.path), "correct": ok})
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    valid = not errors
    right = sum(r["correct"] for r in results)
    return {
        "reward": (right + valid) / (len(fields) + 1),
        "schema_valid": valid,
        "fields_correct": right,
        "fields_total": len(fields),
        "field_results": results,
        "schema_errors": [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message[:200]}" for e in errors[:10]],
    }
