"""Structured output: answer with JSON that satisfies a JSON Schema; partial credit per field."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from servers.answers import reference_answer, strip_reasoning
from servers.resources import ResourcesServer, Session, TaskRow, VerifyRequest, final_answer

MAX_ANSWER_CHARS = 200_000


class StructuredOutput(ResourcesServer):
    """Grade the answer's JSON document against the row's `schema` (and `expected` values, if any)."""

    def __init__(self, name: str, config: Any = None) -> None:
        super().__init__(name, config)
        if importlib.util.find_spec("jsonschema") is None:
            raise RuntimeError("structured_output validates with jsonschema: pip install 'gym-rl[envs]'")

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """reward = (correct fields + whole document valid) / (fields + 1); 0 when no JSON is found."""
        from environments.structured_output.extract import NoJSON, extract_json
        from environments.structured_output.grading import grade, schema_validator

        schema = row.extra.get("schema")
        if not isinstance(schema, dict):
            raise ValueError("a structured_output row needs a `schema` object (a JSON Schema)")
        validator = schema_validator(schema)
        text = strip_reasoning(final_answer(row.response))[-MAX_ANSWER_CHARS:]
        try:
            document = extract_json(text)
        except NoJSON as err:
            return {"reward": 0.0, "schema_valid": False, "json_found": False, "json_error": str(err)}
        graded = grade(document, validator, **({"expected": row.extra["expected"]} if "expected" in row.extra else {}))
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
