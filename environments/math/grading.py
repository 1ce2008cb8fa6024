"""Grading a math answer with math-verify: extraction and symbolic equivalence, bounded in size and time.

This runs inside a `VerifyPool` worker process (sympy can hang; the pool kills a worker past its deadline).
math-verify's own timeouts (SIGALRM) stop most slow cases first; the pool's kill is the backstop for the rest.
"""

from __future__ import annotations

from typing import Any

from servers.answers import answer_region, last_boxed

# Longest expected answer read; the model's answer region is already capped by `answer_region`.
MAX_GOLD_CHARS = 2_000


def gold_text(expected: str) -> str:
    """The reference answer as math-verify reads it: in a LaTeX math environment unless it already is."""
    expected = expected.strip()[:MAX_GOLD_CHARS]
    if "$" in expected or "\\boxed" in expected or "\\(" in expected or "\\[" in expected:
        return expected
    return f"${expected}$"


def grade(expected: str, text: str, timeout_s: int) -> dict[str, Any]:
    """Whether the final answer in `text` equals `expected`; `extracted_answer` is the parsed answer or None."""
    from math_verify import parse, verify  # imported in the worker only: sympy takes a second to load

    region = answer_region(text)
    if not region:
        return {"correct": False, "extracted_answer": None}
    boxed = last_boxed(region)  # math-verify reads the first box; a model's final answer is its last one
    gold = parse(gold_text(expected), parsing_timeout=timeout_s)
    answer = parse(region if boxed is None else f"${boxed}$", parsing_timeout=timeout_s)
    if not answer:
        return {"correct": False, "extracted_answer": None}
    correct = bool(gold) and verify(gold, answer, timeout_seconds=timeout_s)
    return {"correct": correct, "extracted_answer": _short(str(answer[0]))}


def _short(text: str, limit: int = 200) -> str:
    """An extracted answer as reported back: long ones are cut (a 10,000-digit number is not echoed whole)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def warm_up() -> None:
    """Import math-verify and sympy and grade once, so the first real task does not pay for it."""
    grade("1", "1", timeout_s=5)
