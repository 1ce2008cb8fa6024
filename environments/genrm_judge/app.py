"""GenRM judge: a generative reward model compares the policy's response with a baseline, pairwise.

The policy answers the conversation of a task row; `/verify` asks the judge (any policy server, named by
`judge:`) to reason over the conversation and both responses and score them, in both orders to cancel
position bias, and turns the scores into a reward. A judge call that fails or cannot be read is a classified
failure (`_ng_failure_class: judge_failed`), which the collector routes to the failures file, never a reward.
"""

from __future__ import annotations

from typing import ClassVar

import httpx
from pydantic import BaseModel, Field

from environments.genrm_judge.judging import (
    Judgment,
    UnparseableJudgment,
    compare,
    judge_messages,
    parse_judgment,
)
from gym_core.client import ServerError, get_client
from gym_core.protocol import TaskRow
from servers.answers import reference_answer
from servers.resources import ResourcesConfig, ResourcesServer, Session, VerifyRequest, final_answer, row_fields

FAILURE_CLASS = "judge_failed"


class GenRMConfig(ResourcesConfig):
    """The genrm_judge block."""

    judge: str  # the judge's policy server: a name in the config, or a URL
    judge_timeout_s: float = Field(300.0, gt=0)  # one judge call
    swap_positions: bool = True  # judge twice, the candidate first and then second, and average
    max_response_chars: int = Field(20_000, ge=100)  # longer responses are cut before the judge sees them
    judge_max_tokens: int | None = None
    judge_temperature: float | None = None


class GenRMRow(BaseModel):
    """The task row's own fields: the response to compare with, and optionally what to judge by."""

    baseline: str
    principle: str | None = None
    reference: str | None = None  # a strong response, for `gym env test`


class JudgeFailed(Exception):
    """The judge could not deliver a judgment (HTTP error, timeout, unreadable answer)."""


class GenRMJudge(ResourcesServer):
    """Answer the conversation better than the baseline response, as a judge model sees it."""

    config_model: ClassVar[type[BaseModel]] = GenRMConfig
    row_model = GenRMRow
    reward_range = (0.0, 1.0)

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward = 0.5 (candidate score - 1) / 4 + 0.5 (6 - ranking) / 5, from the judge's pairwise scores."""
        task = row_fields(GenRMRow, row)
        candidate = final_answer(row.response)[: self.config.max_response_chars]
        baseline = task.baseline[: self.config.max_response_chars]
        principle = task.principle
        orders = [True, False] if self.config.swap_positions else [True]
        try:
            judgments = [(await self._judge(row, candidate, baseline, principle, first), first) for first in orders]
        except JudgeFailed as exc:
            return {"reward": 0.0, "_ng_failure_class": FAILURE_CLASS, "_ng_failure_judge_error": str(exc),
                    "error": f"judge failed: {exc}"}
        result = compare(judgments)
        preferred = "candidate" if result.ranking < 3.5 else "baseline" if result.ranking > 3.5 else "tie"
        return {"reward": result.reward, "candidate_score": result.candidate_score,
                "baseline_score": result.baseline_score, "ranking": result.ranking, "preferred": preferred,
                "judge_calls": len(judgments)}

    async def _judge(self, row: TaskRow, candidate: str, baseline: str, principle: str | None,
                     candidate_first: bool) -> Judgment:
        first, second = (candidate, baseline) if candidate_first else (baseline, candidate)
        body = {"messages": judge_messages(row.responses_create_params.items, first, second, principle)}
        if self.config.judge_max_tokens is not None:
            body["max_tokens"] = self.config.judge_max_tokens
        if self.config.judge_temperature is not None:
            body["temperature"] = self.config.judge_temperature
        try:
            answer = await get_client().post_json(self.config.judge, "/v1/chat/completions", body,
                                                  timeout=self.config.judge_timeout_s)
            text = answer["choices"][0]["message"].get("content") or ""
        except (httpx.HTTPError, ServerError, LookupError, TypeError, ValueError, AttributeError) as exc:
            raise JudgeFailed(f"calling judge {self.config.judge!r}: {type(exc).__name__}: {exc}") from None
        try:
            return parse_judgment(str(text))
        except UnparseableJudgment as exc:
            raise JudgeFailed(str(exc)) from None

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the row's strong `reference` response, and an evasive non-answer."""
        return reference_answer(row), "I'd rather not get into that."
