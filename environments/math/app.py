"""Math: a single-turn question graded by comparing the model's final answer with `expected_answer`."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

from servers.answers import MAX_SCAN_CHARS, answer_metrics, answer_region, last_boxed
from servers.resources import ResourcesServer, Session, TaskRow, VerifyRequest, final_answer

# Relative tolerance for numeric answers (absolute below 1): 0.3333333 matches 1/3, 0.33 does not.
TOLERANCE = 1e-6
MAX_NUMBER_CHARS = 64  # longer digit strings are compared as text, never converted

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}|\\[dt]?frac\s*(\d)\s*(\d)")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last `\\boxed{...}`, else the last number in its answer text."""
    region = answer_region(text)
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed
    plain = _slash_fractions(region.replace("\u2212", "-"))
    numbers = _NUMBER.findall(plain)
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    """A canonical text form: no $, spaces or LaTeX wrappers; \\frac{a}{b} as a/b; 1,000 as 1000; 5.0 as 5."""
    text = _TEXT.sub(r"\1", answer[:MAX_SCAN_CHARS]).replace("\u2212", "-")
    for junk in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "\\$", "$", "^\\circ", "^{\\circ}", "\\%", "%"):
        text = text.replace(junk, "")
    text = "".join(text.split()).rstrip(".")
    text = _slash_fractions(text)
    if text.startswith("(") and text.endswith(")") and "," not in text:
        text = text[1:-1]
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    number = to_number(text)
    if number is None:
        return text
    if number.denominator == 1:
        return str(number.numerator)
    if "/" in text:
        return f"{number.numerator}/{number.denominator}"
    return format(Decimal(text).normalize(), "f")  # 0.50 -> 0.5, .5 -> 0.5


def _slash_fractions(text: str) -> str:
    """`\\frac{a}{b}`, `\\dfrac{a}{b}`, `\\tfrac{a}{b}` and `\\frac12` written as a/b."""
    return _FRAC.sub(lambda m: f"{m[1] or m[3]}/{m[2] or m[4]}", text)


def to_number(text: str) -> Fraction | None:
    """An exact number from `12`, `-0.5`, `3/4` or `.5` (bounded length); None for anything else."""
    if len(text) > MAX_NUMBER_CHARS or not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(given: str, expected: str) -> bool:
    """True when the normalized answers are equal as text, or as numbers within TOLERANCE."""
    given, expected = normalize(given), normalize(expected)
    if given == expected:
        return True
    a, b = to_number(given), to_number(expected)
    if a is None or b is None:
        return given.lower() == expected.lower()
    return abs(a - b) <= TOLERANCE * max(1, abs(b))


class Math(ResourcesServer):
    """Single-turn math: reward 1 when the final answer equals `expected_answer`, no tools."""

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward 1 for a matching final answer, else 0; `extracted_answer` is what was read (or None)."""
        if "expected_answer" not in row.extra:
            raise ValueError("a math task row needs an `expected_answer` field")
        extracted = extract_answer(final_answer(row.response))
        correct = extracted is not None and answers_match(extracted, str(row.extra["expected_answer"]))
        return {"reward": float(correct), "extracted_answer": None if extracted is None else normalize(extracted)}

    def compute_metrics(self, verify_responses: list[dict]) -> dict:
        """Means and pass@k, plus majority@k over the extracted answers."""
        return answer_metrics(verify_responses)

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the expected answer boxed, and a boxed answer that is off."""
        expected = str(row.extra["expected_answer"])
        return f"Working it out... so the answer is \\boxed{{{expected}}}.", f"I think it is \\boxed{{{expected}1}}."
