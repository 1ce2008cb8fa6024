"""The pairwise judgment: the prompt a judge model gets, the scores read from its answer, and the reward.

The judge sees the conversation and two responses and ends its reasoning with
`{"score_1": 1-5, "score_2": 1-5, "ranking": 1-6}` (the GenRM output format of Nemotron 3's RLHF stage:
scores rate each response's helpfulness, 5 best; ranking 1 = response 1 much better ... 6 = response 2 much
better). A judgment that is missing, malformed or out of range is `UnparseableJudgment`, never a score.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gym_core.protocol import Message

MAX_SCAN_CHARS = 20_000  # of the judge's answer, from the end: the scores come last
INSTRUCTIONS = (
    "You judge two responses to the conversation below. Think step by step about which response is more helpful, "
    "correct and relevant to the user's last message{principle_hint}. Then end your answer with one JSON object: "
    '{{"score_1": <1-5>, "score_2": <1-5>, "ranking": <1-6>}}. score_1 and score_2 rate response 1 and response '
    "2 on their own (5 = excellent, 1 = useless). ranking compares them: 1 = response 1 is much better, 2 = "
    "better, 3 = slightly better, 4 = response 2 is slightly better, 5 = better, 6 = much better.")
_OBJECT = re.compile(r"\{[^{}]*\}")
_THINKING = re.compile(r"<think>.*?</think>", re.S)


class UnparseableJudgment(ValueError):
    """The judge's answer holds no valid score object."""


@dataclass(frozen=True)
class Judgment:
    """One judge call's scores, as the judge wrote them (response 1 and 2 in the order shown)."""

    score_1: float
    score_2: float
    ranking: float


def judge_messages(conversation: list[Any], first: str, second: str, principle: str | None) -> list[dict[str, str]]:
    """The chat messages asking a judge to compare `first` (response 1) with `second` (response 2)."""
    hint = f", following this principle: {principle}" if principle else ""
    turns = "\n".join(f"[{item.role}]: {item.text}" for item in conversation
                      if isinstance(item, Message) and item.role in ("user", "assistant"))
    shown = (f"Conversation:\n{turns}\n\nResponse 1:\n<<<\n{first}\n>>>\n\nResponse 2:\n<<<\n{second}\n>>>"
             + (f"\n\nPrinciple: {principle}" if principle else ""))
    return [{"role": "system", "content": INSTRUCTIONS.format(principle_hint=hint)},
            {"role": "user", "content": shown}]


def parse_judgment(text: str) -> Judgment:
    """The last score object in the judge's answer (after any <think> block); UnparseableJudgment if none."""
    tail = _THINKING.sub("", text[-MAX_SCAN_CHARS:]).split("</think>")[-1]
    for candidate in reversed(_OBJECT.findall(tail)):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict) and {"score_1", "score_2", "ranking"} <= data.keys():
            return _checked(data)
    raise UnparseableJudgment(f"no {{\"score_1\", \"score_2\", \"ranking\"}} object in the judge's answer "
                              f"(it ends: {' '.join(text[-200:].split())!r})")


def _checked(data: dict[str, Any]) -> Judgment:
    values = {}
    for key, (low, high) in (("score_1", (1, 5)), ("score_2", (1, 5)), ("ranking", (1, 6))):
        value = data[key]
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise UnparseableJudgment(f"{key} is {data[key]!r}, not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise UnparseableJudgment(f"{key} is {data[key]!r}; it must be a number from {low} to {high}")
        values[key] = float(value)
    return Judgment(**values)


@dataclass(frozen=True)
class Comparison:
    """The candidate's standing against the baseline, averaged over the judge calls (both orders)."""

    candidate_score: float  # 1-5
    baseline_score: float  # 1-5
    ranking: float  # 1-6 from the candidate's side: 1 = the candidate is much better

    @property
    def reward(self) -> float:
        """In [0, 1]: half the candidate's own score, half its preference over the baseline."""
        return 0.5 * (self.candidate_score - 1) / 4 + 0.5 * (6 - self.ranking) / 5


def compare(judgments: list[tuple[Judgment, bool]]) -> Comparison:
    """Average judgments, each with whether the candidate was response 1, into the candidate's view."""
    views = [(j.score_1, j.score_2, j.ranking) if first else (j.score_2, j.score_1, 7 - j.ranking)
             for j, first in judgments]
    own, other, ranks = (sum(values) / len(views) for values in zip(*views, strict=True))
    return Comparison(own, other, ranks)
