"""Code: the model writes Python; hidden unit tests run in a sandbox; reward = the fraction that pass."""

from __future__ import annotations

import asyncio

from pydantic import Field

from environments.code.extract import extract_code
from environments.code.rows import CodeRow
from environments.code.sandbox import SandboxLimits, run_tests
from servers.answers import answer_metrics, reference_answer
from servers.resources import (
    ResourcesConfig,
    ResourcesServer,
    Session,
    TaskRow,
    VerifyRequest,
    final_answer,
    row_fields,
)

MAX_REPORTED_RESULTS = 50  # per-test results echoed in the verify response


class CodeConfig(ResourcesConfig):
    """The code server block: sandbox limits and how many sandboxes may run at once."""

    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    max_concurrent_sandboxes: int = Field(2, ge=1)
    max_tests: int = Field(100, ge=1)  # tests past this many are not run (and count as failed)


class Code(ResourcesServer):
    """Python function / program synthesis graded by hidden tests in a sandbox."""

    config: CodeConfig
    config_model = CodeConfig
    row_model = CodeRow

    def __init__(self, name: str, config: dict | CodeConfig | None = None) -> None:
        super().__init__(name, config)
        self._slots = asyncio.Semaphore(self.config.max_concurrent_sandboxes)

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward = passed tests / all tests (0 when no code was found); see README.md for every field."""
        tests = row_fields(CodeRow, row).hidden_tests()
        code = extract_code(final_answer(row.response))
        if code is None:
            return _report(0, len(tests), None, [], {}, "no code found in the answer")
        async with self._slots:
            run = await run_tests(code, tests[: self.config.max_tests], self.config.sandbox)
        passed = sum(1 for r in run.results if r.get("passed"))
        return _report(passed, len(tests), code, run.results, run.isolation, run.error)

    def compute_metrics(self, verify_responses: list[dict]) -> dict:
        """Means and pass@k, plus majority@k over the extracted code."""
        return answer_metrics(verify_responses, answer_key="extracted_model_code")

    def known_attempts(self, row: TaskRow) -> tuple[str, str]:
        """For `gym env test`: the row's `reference` program, and a stub that raises for every test."""
        return reference_answer(row), "Not done yet:\n```python\nraise NotImplementedError\n```"


def _report(passed: int, total: int, code: str | None, results: list[dict], isolation: dict,
            error: str | None) -> dict:
    return {
        "reward": passed / total if total else 0.0,
        "all_passed": total > 0 and passed == total,
        "tests_passed": passed,
        "tests_total": total,
        "extracted_model_code": code,
        "test_results": results[:MAX_REPORTED_RESULTS],
        "sandbox_isolation": isolation,
        "sandbox_error": error,
    }
