"""scripts/reliability.py: tests sort into their suites, and the document shows every row with its outcome."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "reliability.py"
spec = importlib.util.spec_from_file_location("reliability_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = report  # its dataclasses resolve their annotations through the module
spec.loader.exec_module(report)


def test_tests_sort_into_their_suites() -> None:
    assert report.suite_of("tests/faults/test_faults.py::test_x[policy]").startswith("Faults")
    assert report.suite_of("tests/gym_core/test_supervisor.py::test_y").startswith("Faults")
    assert report.suite_of("tests/fuzz/test_fuzz_routes.py::test_z[agent:POST:/run]").startswith("Fuzz")
    assert report.suite_of("tests/rollout/test_backoff.py::test_w").startswith("Bad input")
    assert report.suite_of("tests/rollout/test_collect.py::test_v") == "other"


def test_the_document_has_a_row_per_case_and_the_totals() -> None:
    rows = [report.Row(report.SUITES[0][0], "tests/faults/test_faults.py::test_kill[policy]", "passed", 12.0,
                       {"injected": "kill -9 | policy", "outcome": "400/400"}),
            report.Row(report.SUITES[2][0], "tests/fuzz/test_fuzz_routes.py::test_no_5xx[weather:POST:/verify]",
                       "failed", 3.0, why="AssertionError: answered 500")]
    text = report.render(rows, full=True, elapsed_s=60, command="python scripts/reliability.py")
    assert "**1 passed, 1 failed, 0 expected failures" in text
    assert "| `test_faults`: kill [policy] | kill -9 \\| policy | 400/400 | pass | 12 |" in text
    assert "AssertionError: answered 500 | **FAIL** |" in text
    assert "## Soak" not in text  # a suite without rows is left out
