"""A scripted judge engine: a deterministic stand-in for a GenRM model, for tests and demos. Not a model.

It reads the judge prompt that `judging.judge_messages` writes and scores each response by how many key terms
it contains: the words of the principle when the prompt has one, else of the user's last message (stop words
and words under 3 letters left out). score = 1 + round(4 * share of terms found); ranking from the score
difference (equal scores: the shorter response is slightly better). Serve it as a policy server:

    genrm_judge_model: {kind: policy, engine: "environments.genrm_judge.scripted_judge:ScriptedJudge"}
"""

from __future__ import annotations

import json
import re

from gym_core.protocol import ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ContentPart
from servers.policy.engines.base import Engine

STOP_WORDS = frozenset("the and that this with for are was were has have had should must says say said mention "
                       "mentions names name good answer response responses give gives not but its from into "
                       "than then what which who how why when where can could would about".split())
_RESPONSE = re.compile(r"Response (\d):\n<<<\n(.*?)\n>>>", re.S)
_WORD = re.compile(r"[a-z0-9]+")


class ScriptedJudge(Engine):
    """Judges by key-term coverage (see the module docstring); always answers in the GenRM format."""

    async def chat(self, request: ChatCompletionRequest, *, session_id: str | None = None) -> ChatCompletionResponse:
        """Score the two responses of a judge prompt."""
        prompt = _text(request.messages[-1].content)
        responses = dict(_RESPONSE.findall(prompt))
        first, second = responses.get("1", ""), responses.get("2", "")
        terms = key_terms(prompt)
        score_1, score_2 = score(first, terms), score(second, terms)
        reasoning = (f"Key terms: {', '.join(sorted(terms)) or 'none'}. Response 1 scores {score_1}, "
                     f"response 2 scores {score_2}.")
        verdict = json.dumps({"score_1": score_1, "score_2": score_2, "ranking": ranking(score_1, score_2,
                                                                                          len(first), len(second))})
        message = ChatMessage(role="assistant", content=f"{reasoning}\n{verdict}")
        return ChatCompletionResponse(model=self.model_name, choices=[ChatChoice(message=message)])


def key_terms(prompt: str) -> set[str]:
    """The words a good response should contain: the principle's, else the user's last message's."""
    principle = prompt.rpartition("\n\nPrinciple: ")[2] if "\n\nPrinciple: " in prompt else None
    if principle is None:
        conversation = prompt.partition("\n\nResponse 1:")[0]
        users = [line for line in conversation.splitlines() if line.startswith("[user]: ")]
        principle = users[-1].removeprefix("[user]: ") if users else ""
    return {w for w in _WORD.findall(principle.lower()) if len(w) >= 3 and w not in STOP_WORDS}


def score(response: str, terms: set[str]) -> int:
    """1 to 5 by the share of key terms the response contains."""
    if not terms:
        return 3
    found = set(_WORD.findall(response.lower())) & terms
    return 1 + round(4 * len(found) / len(terms))


def ranking(score_1: int, score_2: int, length_1: int, length_2: int) -> int:
    """1 (response 1 much better) to 6 (response 2 much better)."""
    difference = score_1 - score_2
    if difference == 0:
        return 3 if length_1 <= length_2 else 4
    if difference > 0:
        return 1 if difference >= 2 else 2
    return 6 if difference <= -2 else 5


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content)
