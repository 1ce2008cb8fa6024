"""Fault tests start real processes; their children import test doubles from this checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def children_import_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server processes find `tests.faults.doubles` whatever directory pytest runs from."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
