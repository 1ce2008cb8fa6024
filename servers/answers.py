"""Helpers for environments graded by a final answer: `\\boxed{...}` extraction and majority@k over repeats.

Model output is untrusted: every function here takes any string, bounds its work by `MAX_SCAN_CHARS`, and
returns None rather than raising when there is no answer.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from servers.resources import TaskRow, aggregate_metrics

__all__ = ["MAX_SCAN_CHARS", "answer_metrics", "answer_region", "last_boxed", "majority_at_k", "reference_answer",
           "strip_reasoning"]

# A final answer sits at the end of the output; only this many trailing characters are scanned.
MAX_SCAN_CHARS = 8_000
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def strip_reasoning(text: str) -> str:
    """The text after any `<think>...</think>` reasoning ("" when the reasoning never finished)."""
    if not isinstance(text, str):
        return ""
    _, closed, tail = text.rpartition("</think>")
    if closed:
        return tail
    return "" if "<think>" in text else text


def answer_region(text: str) -> str:
    """The part of a model's text that may hold its answer: after any reasoning, at most MAX_SCAN_CHARS."""
    return strip_reasoning(text).rstrip()[-MAX_SCAN_CHARS:]


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included; None if absent."""
    closing: dict[int, int] = {}  # index of each "{" -> index of its "}", in one linear pass
    stack: list[int] = []
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            closing[stack.pop()] = i
    for match in reversed(list(_BOXED.finditer(text))):
        end = closing.get(match.end() - 1)
        if end is not None:
            return text[match.end():end].strip()
    return None  # no box, or only unclosed ones


def majority_at_k(groups: list[list[dict]], answer_key: str = "extracted_answer") -> dict[str, float]:
    """majority@k of `reward` for k = 1..(smallest group): the reward of the most common answer in k repeats.

    Repeats are taken in `_ng_rollout_index` order; missing answers do not vote (a task with none scores 0);
    ties go to the answer seen first. Values are fractions in [0, 1], like `pass_at_k`.
    """
    ordered = [sorted(g, key=lambda r: r.get("_ng_rollout_index", 0)) for g in groups if g]
    max_k = min((len(g) for g in ordered), default=0)
    if max_k < 2:
        return {}
    out = {}
    for k in range(1, max_k + 1):
        scores = [_majority_reward(g[:k], answer_key) for g in ordered]
        out[f"majority@{k}/reward"] = sum(scores) / len(scores)
    return out


def _majority_reward(rows: list[dict], answer_key: str) -> float:
    """The best reward among the rows that gave the most common answer (0 if none answered)."""
    votes = Counter(str(r[answer_key]) for r in rows if r.get(answer_key) not in (None, ""))
    if not votes:
        return 0.0
    winner = votes.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts
    rewards = [r.get("reward") for r in rows if str(r.get(answer_key)) == winner]
    return max((float(x) for x in rewards if isinstance(x, (int, float))), default=0.0)


def answer_metrics(rows: list[dict], answer_key: str = "extracted_answer") -> dict[str, Any]:
    """`aggregate_metrics` (means, pass@k) plus majority@k of the extracted answers."""
    metrics = aggregate_metrics(rows)
    groups: dict[Any, list[dict]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get("_ng_task_index", f"row{i}"), []).append(row)
    majority = majority_at_k(list(groups.values()), answer_key)
    metrics["agent_metrics"].update(majority)
    metrics["key_metrics"].update(majority)
    return metrics


def reference_answer(row: TaskRow) -> str:
    """The row's `reference`: a known-correct final answer that `known_attempts` plays for `gym env test`."""
    reference = row.extra.get("reference")
    if not isinstance(reference, str) or not reference:
        raise ValueError("this row has no `reference` (a known-correct answer); `gym env test` needs one in every "
                         "example row of an environment whose correct answer cannot be derived from the row")
    return reference
