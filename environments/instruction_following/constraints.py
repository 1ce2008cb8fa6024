"""Verifiable instructions in the style of IFEval: each type has a checker, a description and a sampler.

Checkers take any string and must stay linear in it: they never raise on model output. Parameters come from
the task row and are validated when the constraint is built (`build`), so a bad row fails loudly.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_CHECK_CHARS = 200_000  # longer responses are checked on their first 200,000 characters
WORD = re.compile(r"\b[\w'-]+\b")
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
BULLET = re.compile(r"^\s*[*-]\s+\S", re.MULTILINE)
TOPIC_WORDS = ["river", "garden", "engine", "library", "mountain", "harbor", "festival", "orbit", "bakery",
               "forest", "market", "signal", "island", "canvas", "bridge", "lantern"]


def _compare(count: int, relation: str, value: int) -> bool:
    return count >= value if relation == "at_least" else count <= value if relation == "at_most" else count == value


def _relation_text(relation: str, value: int, unit: str) -> str:
    return {"at_least": f"at least {value} {unit}", "at_most": f"at most {value} {unit}"}.get(
        relation, f"exactly {value} {unit}")


def _words(text: str) -> list[str]:
    return WORD.findall(text)


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _json_body(text: str) -> Any:
    stripped = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?```", stripped, re.DOTALL | re.IGNORECASE)
    try:
        return json.loads(fence.group(1) if fence else stripped)
    except (ValueError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def _ends_with(text: str, phrase: str) -> bool:
    """The text ends with the phrase (case-insensitive), and the phrase is not the tail of a longer word."""
    text = text.rstrip()
    if not text.lower().endswith(phrase.lower()):
        return False
    before = text[-len(phrase) - 1:-len(phrase)] if len(text) > len(phrase) else ""
    return not (before.isalnum() and phrase[:1].isalnum())


@dataclass(frozen=True)
class ConstraintType:
    """One kind of instruction: how to check it, how to say it, how to draw its parameters, what it clashes with."""

    name: str
    check: Callable[..., bool]  # (text, **params) -> satisfied
    describe: Callable[..., str]  # (**params) -> the instruction as the prompt says it
    sample: Callable[[random.Random], dict[str, Any]]
    group: str = ""  # at most one constraint per group in a generated task (they would conflict)
    conflicts: tuple[str, ...] = ()  # other groups it cannot be combined with


def _rel(rng: random.Random) -> str:
    return rng.choice(["at_least", "at_most"])


TYPES: dict[str, ConstraintType] = {t.name: t for t in [
    ConstraintType("word_count", lambda t, relation, value: _compare(len(_words(t)), relation, value),
                   lambda relation, value: f"Your response must contain {_relation_text(relation, value, 'words')}.",
                   lambda r: {"relation": _rel(r), "value": r.choice([30, 50, 80, 120])}, "length"),
    ConstraintType("sentence_count",
                   lambda t, relation, value: _compare(len(SENTENCE_END.findall(t)), relation, value),
                   lambda relation, value: f"Write {_relation_text(relation, value, 'sentences')}.",
                   lambda r: {"relation": _rel(r), "value": r.randint(3, 8)}, "length"),
    ConstraintType("paragraph_count", lambda t, value: len(_paragraphs(t)) == value,
                   lambda value: f"Write exactly {value} paragraphs, separated by blank lines.",
                   lambda r: {"value": r.randint(2, 4)}, "layout"),
    ConstraintType("include_keywords", lambda t, keywords: all(re.search(rf"\b{re.escape(k)}\b", t, re.IGNORECASE)
                                                              for k in keywords),
                   lambda keywords: f"Include the keywords {', '.join(repr(k) for k in keywords)}.",
                   lambda r: {"keywords": r.sample(TOPIC_WORDS, 2)}),
    ConstraintType("forbidden_words", lambda t, words: not any(re.search(rf"\b{re.escape(w)}\b", t, re.IGNORECASE)
                                                              for w in words),
                   lambda words: f"Do not use the words {', '.join(repr(w) for w in words)}.",
                   lambda r: {"words": r.sample(["very", "really", "thing", "good", "nice", "stuff"], 2)}),
    ConstraintType("keyword_frequency",
                   lambda t, keyword, relation, value: _compare(
                       len(re.findall(rf"\b{re.escape(keyword)}\b", t, re.IGNORECASE)), relation, value),
                   lambda keyword, relation, value: f"Use the word {keyword!r} "
                                                    f"{_relation_text(relation, value, 'times')}.",
                   lambda r: {"keyword": r.choice(TOPIC_WORDS), "relation": "at_least", "value": r.randint(2, 4)}),
    ConstraintType("letter_frequency",
                   lambda t, letter, relation, value: _compare(t.lower().count(letter), relation, value),
                   lambda letter, relation, value: f"The letter {letter!r} must appear "
                                                   f"{_relation_text(relation, value, 'times')}.",
                   lambda r: {"letter": r.choice("zqxjk"), "relation": "at_least", "value": r.randint(2, 5)}),
    ConstraintType("json_format", lambda t: _json_body(t) is not _NOT_JSON,
                   lambda: "Your entire response must be valid JSON (a ```json fence around it is allowed).",
                   lambda r: {}, "format", ("start", "end", "layout")),
    ConstraintType("bullet_list", lambda t, value: len(BULLET.findall(t)) == value,
                   lambda value: f"Your answer must contain exactly {value} bullet points, "
                                 "each a line starting with '* ' or '- '.",
                   lambda r: {"value": r.randint(2, 5)}, "format"),
    ConstraintType("sections", lambda t, value, marker: len(re.findall(rf"^\s*{re.escape(marker)}\s+\d+", t,
                                                                       re.MULTILINE)) == value,
                   lambda value, marker: f"Your response must have {value} sections; start each with "
                                         f"'{marker} X' on its own line (X = 1, 2, ...).",
                   lambda r: {"value": r.randint(2, 4), "marker": r.choice(["SECTION", "PART"])}, "format"),
    ConstraintType("title", lambda t: re.search(r"<<[^\n<>]+>>", t) is not None,
                   lambda: "Give your answer a title wrapped in double angular brackets, like <<my title>>.",
                   lambda r: {}),
    ConstraintType("all_lowercase", lambda t: t == t.lower() and any(c.isalpha() for c in t),
                   lambda: "Write your entire response in lowercase letters; no capital letters at all.",
                   lambda r: {}, "case"),
    ConstraintType("all_uppercase", lambda t: t == t.upper() and any(c.isalpha() for c in t),
                   lambda: "Write your entire response in capital letters.", lambda r: {}, "case"),
    ConstraintType("capital_word_frequency",
                   lambda t, relation, value: _compare(len([w for w in _words(t) if w.isupper() and len(w) > 1]),
                                                       relation, value),
                   lambda relation, value: f"Use {_relation_text(relation, value, 'words written in all capitals')}.",
                   lambda r: {"relation": "at_least", "value": r.randint(2, 4)}, "case"),
    ConstraintType("starts_with", lambda t, phrase: re.match(rf"\s*{re.escape(phrase)}(?!\w)", t, re.IGNORECASE) is not None,
                   lambda phrase: f"Start your response with the exact phrase {phrase!r}.",
                   lambda r: {"phrase": r.choice(["Here is my answer", "To begin", "In short"])}, "start"),
    ConstraintType("ends_with", lambda t, phrase: _ends_with(t, phrase),
                   lambda phrase: f"End your response with the exact phrase {phrase!r}; nothing may follow it.",
                   lambda r: {"phrase": r.choice(["Is there anything else I can help with?", "That is all.",
                                                  "Thank you for reading."])}, "end"),
    ConstraintType("placeholders", lambda t, value: len(re.findall(r"\[[^\[\]\n]+\]", t)) >= value,
                   lambda value: f"Include at least {value} placeholders in square brackets, like [address].",
                   lambda r: {"value": r.randint(1, 3)}),
    ConstraintType("postscript", lambda t, marker: re.search(rf"^\s*{re.escape(marker)}", t, re.MULTILINE | re.IGNORECASE) is not None,
                   lambda marker: f"At the end of your response, add a postscript starting with {marker!r}.",
                   lambda r: {"marker": r.choice(["P.S.", "P.P.S"])}, "end"),
    ConstraintType("no_commas", lambda t: "," not in t,
                   lambda: "Do not use any commas in your response.", lambda r: {}),
    ConstraintType("quotation", lambda t: len(t.strip()) > 1 and t.strip()[0] == '"' and t.strip()[-1] == '"',
                   lambda: "Wrap your entire response in double quotation marks.", lambda r: {}, "start", ("end",)),
    ConstraintType("highlighted_sections", lambda t, value: len(re.findall(r"\*[^\n*]+\*", t)) >= value,
                   lambda value: f"Highlight at least {value} parts of your answer with markdown, like *this part*.",
                   lambda r: {"value": r.randint(1, 3)}),
]}


@dataclass(frozen=True)
class Constraint:
    """A constraint of a task row: its type and parameters."""

    type: ConstraintType
    params: dict[str, Any]

    def check(self, text: str) -> bool:
        """Whether `text` satisfies it (the first MAX_CHECK_CHARS characters are read)."""
        return bool(self.type.check(text[:MAX_CHECK_CHARS], **self.params))

    def describe(self) -> str:
        """The instruction in words."""
        return self.type.describe(**self.params)


def build(spec: dict[str, Any]) -> Constraint:
    """A `Constraint` from a row's `{"type": ..., <params>}`; ValueError naming the problem if it is not one."""
    if not isinstance(spec, dict):
        # A ValueError, as for any other bad spec: the row model reports it as the row's error.
        wrong = type(spec).__name__
        raise ValueError(f'a constraint is an object {{"type": <name>, <params>}}, not a {wrong}')  # noqa: TRY004
    if spec.get("type") not in TYPES:
        raise ValueError(f"unknown constraint type {str(spec.get('type'))[:50]!r}; known types: {', '.join(TYPES)}")
    kind = TYPES[spec["type"]]
    params = {k: v for k, v in spec.items() if k != "type"}
    try:
        kind.describe(**params)
        kind.check("", **params)
    except TypeError as err:
        raise ValueError(f"constraint {spec['type']!r} has wrong parameters {sorted(params)}: {err}") from None
    return Constraint(kind, params)
