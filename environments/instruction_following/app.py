"""Instruction following: a writing task with verifiable constraints; reward = the fraction satisfied."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, PlainValidator

from environments.instruction_following.constraints import Constraint, build
from servers.answers import reference_answer, strip_reasoning
from servers.resources import ResourcesServer, Session, TaskRow, VerifyRequest, final_answer, row_fields

# A reply that does not attempt the constraints: a comma, capitals, no keywords, too short for any list or format.
IGNORES_CONSTRAINTS = "Sure, HERE is my answer: I would rather not."


class InstructionRow(BaseModel):
    """The task row's own fields: the constraints, each built (and so checked) from its `{"type", <params>}`."""

    constraints: list[Annotated[Constraint, PlainValidator(build)]] = Field(min_length=1)
    reference: str | None = None  # a response meeting every constraint, for `gym env test`


class InstructionFollowing(ResourcesServer):
    """IFEval-style constraints checked by code; `strict` is the all-or-nothing variant."""

    row_model = InstructionRow

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward = satisfied / all constraints; `strict` = 1 only when every one holds."""
        constraints = row_fields(InstructionRow, row).constraints
        text = strip_reasoning(final_answer(row.response))
        results = [c.check(text) for c in constraints]
        return {
            "reward": sum(results) / len(results),
            "strict": float(all(results)),
            "constraint_results": [{"type": c.type.name, "satisfied": ok} for c, ok in zip(constraints, results)],
        }

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the row's `reference` response, and a curt reply that ignores the constraints."""
        return reference_answer(row), IGNORES_CONSTRAINTS
