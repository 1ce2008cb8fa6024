"""`gym env test` for every environment: each `environments/*/app.py` passes the whole conformance check.

New environments are covered as soon as their folder exists; their own tests run in the default suite too
(pytest collects `environments/`), so only the conformance table runs here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servers.kit.catalog import load_environment
from servers.kit.check import FAIL, run_checks

ENVIRONMENTS = sorted(path.parent.name for path in (Path(__file__).parents[2] / "environments").glob("*/app.py"))


@pytest.mark.parametrize("name", ENVIRONMENTS)
async def test_environment_passes_the_conformance_check(name: str) -> None:
    results = await run_checks(load_environment(name))
    failed = [f"{r.name}: {r.detail}" for r in results if r.status == FAIL]
    assert not failed, "\n".join(failed)


def test_every_environment_is_covered() -> None:
    assert {"counter", "weather", "math", "mcqa"} <= set(ENVIRONMENTS)
