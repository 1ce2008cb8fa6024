"""Run the reliability suites in their full forms and write docs/reliability.md (what `make reliability` does).

  python scripts/reliability.py                 # full forms: slow faults, 500 fuzz examples a route, 10 min soak
  python scripts/reliability.py --quick         # the short forms `make test` runs, for a quick look
  python scripts/reliability.py --output FILE   # somewhere other than docs/reliability.md

Every test of the suites becomes one row: what it injected or tried (its `injected` property, else its
docstring), what came out (its `outcome` property), and whether it passed. The command exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (title, pytest paths): each suite is one section of the document.
SUITES: list[tuple[str, list[str]]] = [
    ("Faults (real processes: `gym up`, `gym rollout`, signals)",
     ["tests/faults", "tests/gym_core/test_supervisor.py",
      "tests/gym_core/test_ray_launcher.py::test_a_placed_server_that_dies_is_restarted_by_a_new_actor"]),
    ("Bad input (the row's fault: 4xx naming the field, classified invalid_row)",
     ["tests/servers/test_agent_row_faults.py", "tests/servers/test_scripted_robustness.py",
      "environments/weather/tests/test_weather.py::test_a_row_missing_or_mistyping_its_fields_is_a_422_naming_them",
      "tests/environments/test_row_errors.py",
      "tests/rollout/test_backoff.py"]),
    ("Edge probes and security (sizes, headers, NaN, UTF-8, depth; registry, sessions, stack token, secrets)",
     ["tests/security"]),
    ("Fuzz (every route of every server kind, generated bodies)", ["tests/fuzz"]),
    ("Soak (sustained load, RSS of every process)", ["tests/soak"]),
]
FULL_ENV = {"GYM_FUZZ_EXAMPLES": "500", "GYM_SOAK_S": "600"}
# What the suites hold the code to (issue 10, findings 4-7); kept here so the document explains its own rows.
PREFACE = """\
## What is being checked

- **A stall only delays** (finding 5). The cause of "all 64 rollouts failed with 502 Connection reset after a
  30 s SIGSTOP": uvicorn's keep-alive timer (30 s). A stopped (or blocked) server receives requests on its idle
  connections, held by the kernel; on resume the loop finishes the socket events it was dispatching and runs its
  overdue timers before it polls again, so the keep-alive timer closed those connections with the requests
  unread, and closing a socket with unread data makes the kernel send RST. A 20 s stall never reached the
  timer; a 60 s keep-alive made the 32 s stall harmless; `keep_alive_s: 2` made a 5 s stall fail all 64.
  `gym_core/server.py` `StallSafeHttpProtocol` re-arms the timer when bytes are pending; a stall past the
  episode deadline ends as a classified `episode_timeout`.
- **A crash is restarted, and waited for** (finding 6). `gym up` restarts a server that exits, per its
  `restart:` policy (backoff, limit; `gym status` shows restarts), deregistering the dead one at once (a server
  the Ray backend placed comes back in a new actor);
  `gym rollout` holds rollouts while an upstream is unreachable (rollout/backoff.py) and spends no attempts.
- **Bad data is the row's fault** (finding 7): a 422 naming the field, `invalid_row` in the failures sidecar,
  terminal (not retried on `--resume`), in every environment: each declares its row's fields (`row_model`),
  which /seed_session and /verify check before the environment's code runs.
- **The loop is not blocked** (finding 4): the scripted policy is linear in the text and answers long
  conversations in a worker thread.
- **Fuzz**: no 5xx and no hang on any route of any server kind; **soak**: RSS flat under 1,024 in flight.
"""


@dataclass
class Row:
    """One test's result."""

    suite: str
    test: str
    outcome: str
    seconds: float
    properties: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    why: str = ""


class Recorder:
    """A pytest plugin keeping each test's outcome, timing, docstring and recorded properties."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        """Keep the first paragraph of the test's docstring with its report."""
        outcome = yield
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        outcome.get_result().gym_doc = " ".join(doc.strip().split("\n\n")[0].split())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold setup, call and teardown into one row: the worst outcome wins."""
        row = self.rows.setdefault(report.nodeid, Row(suite_of(report.nodeid), report.nodeid, "passed", 0.0))
        row.seconds += report.duration
        row.doc = row.doc or getattr(report, "gym_doc", "")
        row.properties.update(dict(report.user_properties))
        if hasattr(report, "wasxfail"):
            row.outcome, row.why = "xfail", str(report.wasxfail)
        elif report.failed:
            row.outcome = "failed"
            row.why = str(report.longrepr).strip().splitlines()[-1][:300] if report.longrepr else ""
        elif report.skipped and row.outcome == "passed":
            row.outcome, row.why = "skipped", str(report.longrepr[-1]) if report.longrepr else ""


def suite_of(nodeid: str) -> str:
    """The title of the suite a test belongs to (the longest matching path wins)."""
    def prefix(path: str) -> str:
        return path if "::" in path else path + ("::" if path.endswith(".py") else "/")

    matches = [(len(path), title) for title, paths in SUITES for path in paths if nodeid.startswith(prefix(path))]
    return max(matches)[1] if matches else "other"


def run_suites(full: bool) -> list[Row]:
    """Run every suite with one pytest session (full or short forms); the rows of every test."""
    os.environ.update(FULL_ENV if full else {})
    paths = [p for _, suite in SUITES for p in suite if (ROOT / p.split("::")[0]).exists()]
    recorder = Recorder()
    pytest.main(["-q", "-p", "no:cacheprovider", "-m", "" if full else "not slow", *paths], plugins=[recorder])
    return list(recorder.rows.values())


def machine() -> str:
    """What the results were measured on."""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
            "a machine shared with other work, so durations are indicative only")


def render(rows: list[Row], full: bool, elapsed_s: float, command: str) -> str:
    """The markdown document."""
    counts = {kind: sum(r.outcome == kind for r in rows) for kind in ("passed", "failed", "xfail", "skipped")}
    lines = [
        "# Reliability: faults injected, bad input tried, load held",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} ({'full' if full else 'short'} forms, "
        f"{elapsed_s / 60:.1f} min); {machine()}. Do not edit by hand: rerun the command.",
        "",
        f"**{counts['passed']} passed, {counts['failed']} failed, {counts['xfail']} expected failures, "
        f"{counts['skipped']} skipped.**",
        "",
        PREFACE,
    ]
    for title, _ in SUITES:
        section = [r for r in rows if r.suite == title]
        if not section:
            continue
        lines += [f"## {title}", "", "| case | injected / tried | outcome | result | s |", "|---|---|---|---|---|"]
        for row in section:
            tried = row.properties.get("injected") or row.doc or "-"
            result = row.properties.get("outcome") or row.why or "-"
            lines.append(f"| {_cell(_case(row.test))} | {_cell(tried)} | {_cell(result)} | {_mark(row.outcome)} | "
                         f"{row.seconds:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _case(nodeid: str) -> str:
    """`tests/x/test_y.py::test_a_thing[p]` -> `test_y`: a thing [p] (test names here are sentences)."""
    path, _, name = nodeid.partition("::")
    name, bracket, params = name.partition("[")
    return f"`{Path(path).stem}`: {name.removeprefix('test_').replace('_', ' ')}{' [' + params if bracket else ''}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _mark(outcome: str) -> str:
    return {"passed": "pass", "failed": "**FAIL**", "xfail": "xfail", "skipped": "skipped"}[outcome]


def main(argv: list[str] | None = None) -> int:
    """Run the suites, write the document; exit status 1 if any test failed."""
    parser = argparse.ArgumentParser(prog="python scripts/reliability.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the short forms only (what `make test` runs)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md", help="the document")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    started = time.monotonic()
    rows = run_suites(full=not args.quick)
    command = "python scripts/reliability.py" + (" --quick" if args.quick else "")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(rows, not args.quick, time.monotonic() - started, command))
    failed = [r.test for r in rows if r.outcome == "failed"]
    print(f"{len(rows)} cases, {len(failed)} failed -> {args.output}")
    for test in failed:
        print(f"  FAILED {test}", file=sys.stderr)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
