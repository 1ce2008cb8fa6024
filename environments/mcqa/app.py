"""MCQA: a multiple-choice question graded by the option letter in the model's final answer."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator

from servers.answers import answer_metrics, answer_region, last_boxed
from servers.resources import ResourcesServer, Session, TaskRow, VerifyRequest, final_answer, row_fields

# "Answer: C", "the answer is (c)", "Final answer - **B**": the letter after the word "answer".
# A bare lowercase letter counts only in parentheses ("answer is a" is English, "answer is (a)" a choice).
_STATED = re.compile(r"(?i:answer)(?:\s*(?i:is|would be|[:\-]))?\s*:?\s*"
                     r"(?:\(([A-Za-z])\)|[*\[]*\s*([A-Z])(?![A-Za-z]))")
_PARENTHESISED = re.compile(r"\(([A-Z])\)")
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm)\s*\{([^{}]*)\}")


def option_texts(options: Any) -> dict[str, str]:
    """Letter -> option text, from `[{"A": "..."}, ...]`, `{"A": "...", ...}` or `["...", ...]` (A, B, ...)."""
    if isinstance(options, dict):
        pairs = list(options.items())
    elif isinstance(options, list) and all(isinstance(o, dict) and len(o) == 1 for o in options):
        pairs = [next(iter(o.items())) for o in options]
    elif isinstance(options, list) and all(isinstance(o, str) for o in options) and len(options) <= 26:
        pairs = [(chr(ord("A") + i), o) for i, o in enumerate(options)]
    else:
        raise ValueError('`options` must be [{"A": "..."}, ...], {"A": "...", ...} or a list of strings')
    if not pairs:
        raise ValueError("`options` is empty")
    letters = {str(letter).strip().upper(): str(text) for letter, text in pairs}
    if not all(len(letter) == 1 and letter.isalpha() for letter in letters):
        raise ValueError(f"option keys must be single letters; got {sorted(letters)}")
    return letters


def extract_choice(text: str, letters: dict[str, str]) -> str | None:
    """The chosen letter: `\\boxed{C}`, else "Answer: C", else "(C)", else the option text, else a lone capital."""
    region = answer_region(text)
    boxed = last_boxed(region)
    if boxed is not None:
        inner = _LATEX_TEXT.sub(r"\1", boxed).strip(" ().*[]").upper()
        if inner in letters:
            return inner
    for pattern in (_STATED, _PARENTHESISED):
        found = [m.group(m.lastindex).upper() for m in pattern.finditer(region)]
        found = [letter for letter in found if letter in letters]
        if found:
            return found[-1]
    said = region.strip().rstrip(".").casefold()
    by_text = [letter for letter, option in letters.items() if option.strip().casefold() == said]
    if said and len(by_text) == 1:
        return by_text[0]
    lone = [m for m in _STANDALONE.findall(region) if m in letters]
    return lone[-1] if lone else None


class MCQARow(BaseModel):
    """The task row's own fields: the options (any accepted layout, read as letter -> text) and the right letter."""

    options: dict[str, str]
    expected_answer: str

    @field_validator("options", mode="before")
    @classmethod
    def _lettered(cls, options: Any) -> dict[str, str]:
        return option_texts(options)

    @field_validator("expected_answer")
    @classmethod
    def _letter(cls, expected: str, info: ValidationInfo) -> str:
        letter = expected.strip().upper()
        options = info.data.get("options")  # absent when the options themselves were refused
        # A letter that is no option's would make every rollout of the row a silent 0.
        if options is not None and letter not in options:
            raise ValueError(f"{letter[:20]!r} is not one of the options' letters ({', '.join(sorted(options))})")
        return letter


class MCQA(ResourcesServer):
    """Multiple choice: reward 1 when the chosen letter is `expected_answer`, no tools."""

    row_model = MCQARow

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward 1 for the expected letter, else 0; `extracted_answer` is the letter read (or None)."""
        task = row_fields(MCQARow, row)
        chosen = extract_choice(final_answer(row.response), task.options)
        return {"reward": float(chosen == task.expected_answer), "extracted_answer": chosen}

    def compute_metrics(self, verify_responses: list[dict]) -> dict:
        """Means and pass@k, plus majority@k over the chosen letters."""
        return answer_metrics(verify_responses)

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the expected letter, and the next option's letter."""
        task = row_fields(MCQARow, row)
        letters = sorted(task.options)
        wrong = letters[(letters.index(task.expected_answer) + 1) % len(letters)]
        return f"Let me think. Answer: {task.expected_answer}", f"Let me think. Answer: {wrong}"
