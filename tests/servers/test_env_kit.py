"""The conformance check catches each way an environment can break, and the scaffold passes it as written.

Each broken environment below is a real environment folder written to a temporary directory: a counter
with one deliberate fault. The check must fail exactly the row that fault is about.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from servers.kit.catalog import KitError, load_environment
from servers.kit.check import FAIL, PASS, SKIP, CheckOptions, run_checks
from servers.kit.scaffold import scaffold

ROOT = Path(__file__).parents[2]
COUNTER_ROWS = (ROOT / "environments" / "counter" / "data" / "example.jsonl").read_text()
FAST = CheckOptions(rollouts=200, sessions=16, deadline_grace_s=2.0)

HEADER = """
from __future__ import annotations
import random
from typing import Any
import re
from pydantic import BaseModel
from servers.resources import Attempt, ResourcesServer, Session, TaskRow, VerifyRequest, tool

STORE: dict = {}


class CounterRow(BaseModel):
    target: int
"""
ROW_MODEL = """
    row_model = CounterRow
"""
ATTEMPTS = """
    def known_attempts(self, row: TaskRow):
        target = row.extra["target"]
        return Attempt("Done.", (("increment", {"by": target}),)), Attempt("", (("increment", {"by": target + 1}),))
"""
GOOD_TOOL = """
    @tool
    async def increment(self, session: Session, by: int) -> dict:
        session.state["count"] = session.state.get("count", 0) + by
        return {"count": session.state["count"]}
"""
GOOD_VERIFY = """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return float(session.state.get("count") == row.extra["target"])
"""

# name -> (class body, the check that must fail)
BROKEN = {
    "kit_shared_state": (ROW_MODEL + """
    async def seed(self, row, session: Session) -> None:
        STORE["count"] = 0   # one counter for everyone, reset by each new rollout

    @tool
    async def increment(self, session: Session, by: int) -> dict:
        STORE["count"] = STORE.get("count", 0) + by
        return {"count": STORE["count"]}

    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return float(STORE.get("count") == row.extra["target"])
""" + ATTEMPTS, "isolation"),
    "kit_leaky": (ROW_MODEL + GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        STORE[session.id] = session.state.get("count")   # kept forever
        return float(session.state.get("count") == row.extra["target"])
""" + ATTEMPTS, "cleanup"),
    "kit_random": (ROW_MODEL + GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        hit = session.state.get("count") == row.extra["target"]
        return 1.0 if hit else random.random() / 2
""" + ATTEMPTS, "determinism"),
    "kit_crashy": (ROW_MODEL + GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        text = "".join(i.text for i in row.response.output if getattr(i, "role", None) == "assistant")
        digits = [int(n) for n in re.findall(r"[0-9]+", text)]   # int() refuses 10,000 digits
        return float(session.state.get("count") == row.extra["target"] and not digits)
""" + ATTEMPTS, "adversarial"),
    "kit_out_of_range": (ROW_MODEL + GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return 2.0 * (session.state.get("count") == row.extra["target"])
""" + ATTEMPTS, "rewards"),
    "kit_no_attempts": (ROW_MODEL + GOOD_TOOL + GOOD_VERIFY, "rewards"),
    "kit_no_row_model_crash": (GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:   # no row model, and a dict is a crash
        return float(session.state.get("count", 0) + 1 == row.extra["target"] + 1)
""" + ATTEMPTS, "row errors"),
    "kit_row_crash": ("""
    class Row(BaseModel):   # declares `target` optional, but verify needs it: a row without it is a TypeError
        target: int | None = None

    row_model = Row
""" + GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return float(session.state.get("count", 0) + 1 == row.extra.get("target") + 1)
""" + ATTEMPTS, "row errors"),
    "kit_row_any_type": ("""
    class Row(BaseModel):   # takes `target` of any type, but verify adds to it: a dict there is a TypeError
        target: Any

    row_model = Row
""" + GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return float(session.state.get("count", 0) + 1 == row.extra["target"] + 1)
""" + ATTEMPTS, "row errors"),
    "kit_no_deadline": (ROW_MODEL + GOOD_TOOL + GOOD_VERIFY + ATTEMPTS + """
    def _tool_route(self, spec):
        from servers.resources import loads
        from fastapi.responses import JSONResponse
        method = getattr(self, spec.method_name)
        async def call_tool(request):   # no deadline around the tool
            args = loads(await request.body() or b"{}")
            return JSONResponse(await method(session=self.sessions.get(request.headers["x-session-id"]), **args))
        return call_tool
""", "tool deadline"),
}


def write_env(root: Path, name: str, body: str, rows: str = COUNTER_ROWS) -> Path:
    """A whole environment folder: app.py with class `Env`, config.yaml, data/example.jsonl."""
    folder = root / name
    (folder / "data").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "app.py").write_text(HEADER + "\n\nclass Env(ResourcesServer):" + body)
    (folder / "config.yaml").write_text(f"servers:\n  {name}: {{kind: resources, env: {name}}}\n")
    (folder / "data" / "example.jsonl").write_text(rows)
    return folder


@pytest.fixture
def env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "envs"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def statuses(results) -> dict[str, str]:
    return {r.name: r.status for r in results}


@pytest.mark.parametrize("name", sorted(BROKEN))
async def test_each_fault_fails_its_check(env_root: Path, name: str) -> None:
    body, failing = BROKEN[name]
    results = await run_checks(load_environment(str(write_env(env_root, name, body))), FAST)
    table = {r.name: r for r in results}
    assert table[failing].status == FAIL, [(r.name, r.status, r.detail) for r in results]
    assert table["rows"].status == PASS
    assert table["row errors"].status == PASS or failing == "row errors"
    if name == "kit_no_attempts":
        assert "known_attempts" in table["rewards"].detail
    if name == "kit_no_row_model_crash":
        assert "with `target` of another type" in table["row errors"].detail and "500" in table["row errors"].detail
    if name == "kit_row_crash":
        assert "without `target`" in table["row errors"].detail and "500" in table["row errors"].detail
    if name == "kit_row_any_type":
        assert "with `target` of another type" in table["row errors"].detail and "500" in table["row errors"].detail


async def test_a_sound_environment_passes_every_check(env_root: Path) -> None:
    folder = write_env(env_root, "kit_sound", ROW_MODEL + GOOD_TOOL + GOOD_VERIFY + ATTEMPTS)
    results = await run_checks(load_environment(str(folder)), FAST)
    assert {r.status for r in results} <= {PASS, SKIP}, [(r.name, r.status, r.detail) for r in results]
    assert [r.name for r in results] == ["rows", "openai types", "row errors", "rewards", "isolation", "cleanup",
                                         "tool deadline", "determinism", "adversarial"]


async def test_the_design_counter_without_a_row_model_passes_every_check(env_root: Path) -> None:
    """DESIGN.md's whole environment: a row missing `target` is refused as the row's (row.extra raises a
    MissingRowField the base answers 422 invalid_row); a mistyped one is served, which the detail points out."""
    folder = write_env(env_root, "kit_design_counter", GOOD_TOOL + GOOD_VERIFY + ATTEMPTS)
    table = {r.name: r for r in await run_checks(load_environment(str(folder)), FAST)}
    assert {r.status for r in table.values()} <= {PASS, SKIP}, [(r.name, r.status, r.detail) for r in table.values()]
    detail = table["row errors"].detail
    assert "6 rows missing or mistyping a field refused" in detail and "6 served" in detail and "no row_model" in detail


async def test_rows_without_fields_of_their_own_need_no_row_model(env_root: Path) -> None:
    rows = "".join(line.split(', "target"')[0] + "}\n" for line in COUNTER_ROWS.splitlines())
    body = GOOD_TOOL + """
    async def verify(self, row: VerifyRequest, session: Session) -> float:
        return float(session.state.get("count") == 3)

    def known_attempts(self, row: TaskRow):
        return Attempt("Done.", (("increment", {"by": 3}),)), Attempt("", (("increment", {"by": 4}),))
"""
    table = {r.name: r for r in await run_checks(load_environment(str(write_env(env_root, "kit_bare", body, rows))),
                                                 FAST)}
    assert table["row errors"].status == SKIP and "no fields of their own" in table["row errors"].detail


async def test_bad_example_rows_fail_and_later_checks_skip(env_root: Path) -> None:
    rows = "\n".join(COUNTER_ROWS.splitlines()[:3]) + "\n"
    folder = write_env(env_root, "kit_few_rows", GOOD_TOOL + GOOD_VERIFY + ATTEMPTS, rows)
    table = {r.name: r for r in await run_checks(load_environment(str(folder)), FAST)}
    assert table["rows"].status == FAIL and "at least 5" in table["rows"].detail
    assert table["isolation"].status == SKIP


async def test_rows_offering_a_tool_the_server_lacks_fail(env_root: Path) -> None:
    rows = COUNTER_ROWS.replace('"name": "increment"', '"name": "decrement"')
    folder = write_env(env_root, "kit_wrong_tool", GOOD_TOOL + GOOD_VERIFY + ATTEMPTS, rows)
    table = {r.name: r for r in await run_checks(load_environment(str(folder)), FAST)}
    assert table["rows"].status == FAIL and "decrement" in table["rows"].detail


def test_unknown_environment_names_the_close_one() -> None:
    with pytest.raises(KitError, match="did you mean 'weather'"):
        load_environment("wether")


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    for bad in ("My-Env", "class", "9lives", ""):
        with pytest.raises(KitError, match="not a usable environment name"):
            scaffold(bad, tmp_path)
    scaffold("shop", tmp_path)
    with pytest.raises(KitError, match="--force"):
        scaffold("shop", tmp_path)
    assert scaffold("shop", tmp_path, force=True)


def test_gym_env_new_output_passes_gym_env_test(tmp_path: Path) -> None:
    """The real commands, as an author runs them: scaffold, then the conformance check and its own tests."""
    made = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "new", "kit_scaffolded",
                           "--root", str(tmp_path / "environments")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "environments" / "kit_scaffolded"
    assert {p.name for p in folder.iterdir()} >= {"app.py", "config.yaml", "README.md", "generate.py", "data", "tests"}
    tested = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "test", str(folder), "--rollouts", "300"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "passed" in tested.stdout and "FAIL" not in tested.stdout
    for check in ("rows", "row errors", "rewards", "isolation", "cleanup", "tool deadline", "determinism",
                  "adversarial", "pytest"):
        assert re.search(rf"^{check}\s+pass\s", tested.stdout, re.M), (check, tested.stdout)
    generated = subprocess.run([sys.executable, str(folder / "generate.py"), "--train", "4", "--validation", "2"],
                               capture_output=True, text=True, timeout=60)
    assert generated.returncode == 0, generated.stderr
    assert len((folder / "data" / "train.jsonl").read_text().splitlines()) == 4


def test_gym_env_test_exits_1_on_a_failing_environment(env_root: Path) -> None:
    folder = write_env(env_root, "kit_cli_leaky", BROKEN["kit_leaky"][0])
    done = subprocess.run([sys.executable, "-m", "gym_core.cli", "env", "test", str(folder), "--no-pytest",
                           "--rollouts", "200"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED: cleanup" in done.stdout and "STORE grew by 200" in done.stdout


def test_an_environment_that_does_not_import_is_reported_where(tmp_path: Path, capsys) -> None:
    from gym_core.cli import main as gym

    (tmp_path / "kit_syntax").mkdir()
    (tmp_path / "kit_syntax" / "app.py").write_text("def oops(:\n")
    assert gym(["env", "test", str(tmp_path / "kit_syntax")]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and "app.py\", line 1" in err and "SyntaxError" in err


def test_gym_env_list_has_one_line_per_environment(capsys) -> None:
    from gym_core.cli import main as gym

    assert gym(["env", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert lines[0].split()[:2] == ["NAME", "REWARD"] and {"counter", "multi_turn", "genrm_judge"} <= set(names)
    assert all("[0, 1]" in line for line in lines[1:])
