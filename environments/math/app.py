"""Math: a single-turn question graded by math-verify (numbers, fractions, expressions, intervals, sets)."""

from __future__ import annotations

import importlib.util

from pydantic import BaseModel, Field

from environments.math.grading import grade, warm_up
from environments.math.verify_pool import TaskTimeout, VerifyPool
from servers.answers import answer_metrics
from servers.resources import (
    ResourcesConfig,
    ResourcesServer,
    Session,
    TaskRow,
    VerifyRequest,
    final_answer,
    row_fields,
)


class MathConfig(ResourcesConfig):
    """The math server block: grading workers and their time limits."""

    grading_workers: int = Field(2, ge=1)  # processes that run math-verify
    parse_timeout_s: int = Field(5, ge=1)  # math-verify's own limit for parsing, and again for comparing
    hard_timeout_s: float = Field(30.0, gt=0)  # a grading past this is killed with its worker: reward 0


class MathRow(BaseModel):
    """The task row's own field: the reference answer (a number is read as its text, as NeMo Gym rows may hold)."""

    expected_answer: str | int | float


class Math(ResourcesServer):
    """Single-turn math: reward 1 when the final answer is equivalent to `expected_answer`, no tools."""

    config: MathConfig
    config_model = MathConfig
    row_model = MathRow

    def __init__(self, name: str, config: dict | MathConfig | None = None) -> None:
        super().__init__(name, config)
        if importlib.util.find_spec("math_verify") is None:
            raise RuntimeError("the math environment grades with math-verify: pip install 'gym-rl[envs]'")
        self.pool = VerifyPool(self.config.grading_workers, self.config.hard_timeout_s, warm_up)

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward 1 for an equivalent final answer, else 0; `extracted_answer` is what was read (or None)."""
        expected = str(row_fields(MathRow, row).expected_answer)
        text = final_answer(row.response)
        try:
            graded = await self.pool.run(grade, expected, text, self.config.parse_timeout_s)
        except TaskTimeout:
            return {"reward": 0.0, "extracted_answer": None, "grading_timed_out": True}
        return {"reward": float(graded["correct"]), "extracted_answer": graded["extracted_answer"],
                "grading_timed_out": False}

    def compute_metrics(self, verify_responses: list[dict]) -> dict:
        """Means and pass@k, plus majority@k over the extracted answers."""
        return answer_metrics(verify_responses)

    async def shutdown(self) -> None:
        """Stop the grading workers too."""
        self.pool.close()
        await super().shutdown()

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the expected answer boxed, and the expected answer plus one boxed (off by one)."""
        expected = str(row_fields(MathRow, row).expected_answer)
        return (f"Working it out... so the answer is \\boxed{{{expected}}}.",
                f"I think it is \\boxed{{({expected}) + 1}}.")
