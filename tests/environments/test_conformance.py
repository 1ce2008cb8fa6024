"""`gym env test` for every environment: each `environments/*/app.py` passes the whole conformance check.

New environments are covered as soon as their folder exists; their own tests run in the default suite too
(pytest collects `environments/`), so only the conformance table runs here. The default run checks cleanup after
100 rollouts per environment; `make test-all` (and `gym env test` itself) after 1,000.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servers.kit.catalog import load_environment
from servers.kit.check import FAIL, CheckOptions, run_checks

ENVIRONMENTS = sorted(path.parent.name for path in (Path(__file__).parents[2] / "environments").glob("*/app.py"))
DEFAULT_RUN = CheckOptions(rollouts=100)  # code's sandboxed tests make 1,000 rollouts about 100 s on 2 cores


async def assert_conforms(name: str, options: CheckOptions) -> None:
    results = await run_checks(load_environment(name), options)
    failed = [f"{r.name}: {r.detail}" for r in results if r.status == FAIL]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("name", ENVIRONMENTS)
async def test_environment_passes_the_conformance_check(name: str) -> None:
    await assert_conforms(name, DEFAULT_RUN)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", ENVIRONMENTS)
async def test_environment_passes_the_full_conformance_check(name: str) -> None:
    await assert_conforms(name, CheckOptions())


def test_every_environment_is_covered() -> None:
    assert {"counter", "weather", "math", "mcqa", "code", "instruction_following", "structured_output",
            "multi_step_tools", "calendar", "prompt_injection", "multi_turn", "genrm_judge"} <= set(ENVIRONMENTS)
