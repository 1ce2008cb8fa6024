"""Packaging tells the truth (issue 10, finding 9): the Python it asks for is the one the code needs, and every
optional extra is pinned and used by code that ships."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path


ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SHIPPED = ["gym_core", "servers", "environments", "model", "rollout"]
# Each extra's distribution and the module name code imports it by.
EXTRA_MODULES = {"vllm": "vllm", "ray": "ray", "trl": "trl"}
# Extras whose package shipped code runs as a program rather than importing it: the command it runs.
EXTRA_COMMANDS = {"vllm": '["vllm", "serve"]'}


def _shipped_sources() -> str:
    return "\n".join(p.read_text() for package in SHIPPED for p in (ROOT / package).rglob("*.py"))


def test_requires_python_is_what_the_code_uses() -> None:
    code = _shipped_sources()
    assert "asyncio.timeout(" in code or "asyncio.Runner(" in code  # both are Python 3.11+
    assert PROJECT["requires-python"] == ">=3.11"


def test_every_optional_extra_is_pinned() -> None:
    for extra in EXTRA_MODULES:
        requirements = PROJECT["optional-dependencies"].get(extra, [])
        for requirement in requirements:
            assert re.search(r"==\d", requirement), f"extra {extra!r}: {requirement!r} is not pinned"


def test_every_optional_extra_is_used_by_shipped_code() -> None:
    code = _shipped_sources()
    for extra, module in EXTRA_MODULES.items():
        if extra not in PROJECT["optional-dependencies"]:
            continue  # not offered: nothing to check
        used = re.search(rf"^\s*(import {module}\b|from {module}(\.| import))", code, flags=re.M)
        used = used or (extra in EXTRA_COMMANDS and EXTRA_COMMANDS[extra] in code)
        assert used, f"the {extra!r} extra installs {module}, but no shipped module imports it"
