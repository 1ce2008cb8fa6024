"""The code in a model's answer: the last fenced block (```python, ```py or bare ```), else the whole answer."""

from __future__ import annotations

import re

from servers.answers import strip_reasoning

MAX_CODE_CHARS = 64_000  # longer code is not run (the answer region itself is capped far above this)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py"}


def extract_code(text: str) -> str | None:
    """The code to run: the last Python (or untagged) fenced block; unfenced text if it compiles; else None."""
    region = _region(text)
    blocks = [body for tag, body in _FENCE.findall(region) if tag.lower() in _PYTHON_TAGS]
    if blocks:
        code = blocks[-1]
    elif "```" not in region and _compiles(region):
        code = region
    else:
        return None
    return code if code.strip() and len(code) <= MAX_CODE_CHARS else None


def _region(text: str) -> str:
    """After any reasoning, at most 4 x MAX_CODE_CHARS from the end."""
    return strip_reasoning(text)[-4 * MAX_CODE_CHARS:]


def _compiles(source: str) -> bool:
    if len(source) > MAX_CODE_CHARS:
        return False
    try:
        compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
        return False
    return True
