"""Finding the JSON document in a model's answer: the whole text, a fenced block, or the last {...} / [...] in prose.

Bounded: at most MAX_JSON_CHARS are considered and documents nested deeper than MAX_DEPTH are refused before
parsing, so a 1 MB string or 100,000 nested brackets cost one linear scan.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_CHARS = 200_000
MAX_DEPTH = 64
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[^\n]*\n(.*?)```", re.DOTALL)


class NoJSON(Exception):
    """No JSON document could be read from the answer (the message says why)."""


def extract_json(text: str) -> Any:
    """The answer's JSON document: whole text, else the last fenced block, else the last balanced object/array."""
    text = text.strip()
    if len(text) > MAX_JSON_CHARS:
        text = text[-MAX_JSON_CHARS:]
    candidates = [text] + [m.group(1) for m in reversed(list(_FENCE.finditer(text)))]
    span = _last_balanced(text)
    if span is not None:
        candidates.append(text[span[0]:span[1]])
    reasons = []
    for candidate in candidates:
        try:
            return parse_bounded(candidate)
        except NoJSON as err:
            reasons.append(str(err))
    raise NoJSON(reasons[-1] if reasons else "no JSON found")


def parse_bounded(text: str) -> Any:
    """json.loads, refusing documents nested deeper than MAX_DEPTH (checked first, in one pass)."""
    if nesting_depth(text) > MAX_DEPTH:
        raise NoJSON(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise NoJSON(f"not JSON: {str(err)[:200]}") from None


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside JSON strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _last_balanced(text: str) -> tuple[int, int] | None:
    """(start, end) of the last top-level {...} or [...] in the text, matched outside strings; None if none."""
    end = max(text.rfind("}"), text.rfind("]"))
    if end < 0:
        return None
    stack: list[tuple[str, int]] = []
    last = None
    in_string = escaped = False
    for i, char in enumerate(text[: end + 1]):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"' and stack:
            in_string = True
        elif char in "[{":
            stack.append((char, i))
        elif char in "]}" and stack:
            opener, start = stack.pop()
            if (opener, char) in (("{", "}"), ("[", "]")) and not stack:
                last = (start, i + 1)
            elif (opener, char) not in (("{", "}"), ("[", "]")):
                stack.clear()
    return last
