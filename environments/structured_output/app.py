"""Structured output: answer with JSON that satisfies a JSON Schema; partial credit per field."""

from __future__ import annotations

import importlib.util
import json
from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainValidator

from servers.answers import reference_answer, strip_reasoning
from servers.resources import ResourcesServer, Session, TaskRow, VerifyRequest, final_answer, row_fields

MAX_ANSWER_CHARS = 200_000


def _schema_validator(schema: Any) -> Any:
    """A jsonschema validator for the row's `schema`; ValueError if it is not a valid JSON Schema object."""
    from environments.structured_output.grading import schema_validator  # jsonschema is an optional extra

    if not isinstance(schema, dict):
        raise ValueError(f"must be a JSON Schema object, not a {type(schema).__name__}")  # noqa: TRY004 (for pydantic)
    return schema_validator(schema)


class StructuredRow(BaseModel):
    """The task row's own fields: the JSON Schema (read as its validator) and, optionally, the expected values."""

    validator: Annotated[Any, PlainValidator(_schema_validator)] = Field(alias="schema")
    expected: Any = None  # any JSON document, null included: whether the row has one is `model_fields_set`
    reference: str | None = None  # a known-correct answer for rows without `expected`, for `gym env test`


class StructuredOutput(ResourcesServer):
    """Grade the answer's JSON document against the row's `schema` (and `expected` values, if any)."""

    row_model = StructuredRow

    def __init__(self, name: str, config: Any = None) -> None:
        super().__init__(name, config)
        if importlib.util.find_spec("jsonschema") is None:
            raise RuntimeError("structured_output validates with jsonschema: pip install 'gym-rl[envs]'")

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """reward = (correct fields + whole document valid) / (fields + 1); 0 when no JSON is found."""
        from environments.structured_output.extract import NoJSON, extract_json
        from environments.structured_output.grading import grade

        task = row_fields(StructuredRow, row)
        text = strip_reasoning(final_answer(row.response))[-MAX_ANSWER_CHARS:]
        try:
            document = extract_json(text)
        except NoJSON as err:
            return {"reward": 0.0, "schema_valid": False, "json_found": False, "json_error": str(err)}
        expected = {"expected": task.expected} if "expected" in task.model_fields_set else {}
        graded = grade(document, task.validator, **expected)
        return {**graded, "json_found": True, "json_error": None}

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the `expected` document (else the row's `reference`), and it missing its last part."""
        if "expected" in row.extra:
            document = row.extra["expected"]
        else:
            document = json.loads(reference_answer(row))
        return f"```json\n{json.dumps(document)}\n```", f"```json\n{json.dumps(_near_miss(document))}\n```"


def _near_miss(document: Any) -> Any:
    """The document without its last field (or item): a plausible, incomplete answer."""
    if isinstance(document, dict):
        return dict(list(document.items())[:-1])
    if isinstance(document, list):
        return document[:-1]
    return None
