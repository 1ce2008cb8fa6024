"""`gym env test`: the conformance check every environment passes, as a pass/fail table.

Checks, in order (each one a row of the table):
  rows          data/example.jsonl has >= 5 task rows that parse; the tools they offer are the server's
  openai types  each row's request is valid against the official `openai` SDK's Responses types (skipped
                when the SDK is not installed); function tools carry `strict`
  row errors    each example row without one of its fields, or with one holding a value of another JSON type,
                is refused with a 4xx `invalid_row` naming the field, or served, never a 5xx. With a
                `row_model` (which must accept every example row) exactly what it refuses is refused, at
                /seed_session and /verify; skipped when the rows carry no fields of their own
  rewards       the environment's known correct and incorrect attempts at every row get rewards inside
                its declared `reward_range`, the correct one higher
  isolation     64 sessions interleaved step by step get the rewards they get alone
  cleanup       after 1,000 rollouts no session state is left, in the session store or elsewhere
  tool deadline a hanging tool is cut off by `tool_timeout_s` with an error the model sees, while the
                server keeps serving
  determinism   the same attempt, replayed, gets the same reward
  adversarial   huge, malformed and hostile model output gets a reward in range, never a crash
The environment runs in-process (see harness.py); the whole check takes seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from gym_core.launcher import format_table
from gym_core.protocol import TaskRow, is_reward
from gym_core.server import SESSION_HEADER, describe_validation_error
from servers.kit.adversarial import adversarial_outputs, raw_bodies
from servers.kit.catalog import Environment, read_example_rows
from servers.kit.harness import CheckFailure, Harness, assistant_message, function_call, harness
from servers.resources import Attempt, ResourcesServer, Session, tool

MIN_EXAMPLE_ROWS = 5
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class CheckOptions:
    """How hard `gym env test` pushes."""

    rollouts: int = 1000  # for the cleanup check
    sessions: int = 64  # interleaved, for the isolation check
    concurrency: int = 32  # rollouts in flight during the cleanup check
    repeats: int = 3  # replays per attempt, for the determinism check
    tool_timeout_s: float = 0.5  # the deadline the hanging tool must be cut off by
    deadline_grace_s: float = 30.0  # how much later than that the check gives up waiting
    verify_timeout_s: float = 60.0  # the longest one adversarial /verify may take


@dataclass
class CheckResult:
    """One row of the table."""

    name: str
    status: str  # pass | fail | skip
    detail: str
    seconds: float = 0.0


@dataclass
class Baseline:
    """Each row's attempts and the rewards they got alone, the reference for later checks."""

    rows: list[dict[str, Any]]
    attempts: list[tuple[Attempt, Attempt]]
    rewards: dict[tuple[int, int], float]  # (row index, 0 correct / 1 incorrect) -> reward

    def cases(self) -> list[tuple[int, int]]:
        """Every (row index, which attempt) pair."""
        return sorted(self.rewards)

    def attempt(self, case: tuple[int, int]) -> Attempt:
        """The attempt of one case."""
        return self.attempts[case[0]][case[1]]


async def run_checks(env: Environment, options: CheckOptions = CheckOptions()) -> list[CheckResult]:
    """Every check against one environment, in table order; a check that cannot run is a `skip`."""
    results: list[CheckResult] = []
    rows = await _timed(results, "rows", _check_rows(env))
    await _timed(results, "openai types", _check_openai_types(rows or []))
    lo, hi = env.server_class.reward_range
    try:
        async with harness(env) as h:
            await _timed(results, "row errors", _check_row_errors(h, rows))
            baseline = await _timed(results, "rewards", _check_rewards(h, rows, lo, hi))
            await _timed(results, "isolation", _check_isolation(h, baseline, options.sessions))
            await _timed(results, "cleanup", _check_cleanup(h, baseline, options))
            await _timed(results, "tool deadline", _check_tool_deadline(env, rows, options))
            await _timed(results, "determinism", _check_determinism(h, baseline, options.repeats))
            await _timed(results, "adversarial", _check_adversarial(h, rows, (lo, hi), options.verify_timeout_s))
    except Exception as exc:  # the server would not start (or stop): everything after it is moot
        results.append(CheckResult("server", FAIL, f"the environment's server failed: {_describe(exc)}"))
    return results


def format_results(results: list[CheckResult]) -> str:
    """The pass/fail table."""
    rows = [[r.name, r.status.upper() if r.status == FAIL else r.status, f"{r.seconds:.1f}s", r.detail]
            for r in results]
    return format_table(["CHECK", "RESULT", "TIME", "DETAIL"], rows)


class _Skip(Exception):
    """A check that cannot run (its prerequisite failed or is missing)."""


async def _timed(results: list[CheckResult], name: str, check: Awaitable[tuple[Any, str]]) -> Any:
    """Run one check, append its row; returns what it produced (None when it failed or was skipped)."""
    started = time.perf_counter()
    try:
        value, detail = await check
        status = PASS
    except _Skip as reason:
        value, detail, status = None, str(reason), SKIP
    except Exception as exc:  # a check's failure is its row, whatever raised
        value, detail, status = None, _describe(exc), FAIL
    results.append(CheckResult(name, status, detail, time.perf_counter() - started))
    return value


def _describe(exc: Exception) -> str:
    if isinstance(exc, (AssertionError, CheckFailure)) or type(exc).__module__.startswith("servers.kit"):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------ rows


async def _check_rows(env: Environment) -> tuple[list[dict[str, Any]], str]:
    rows = read_example_rows(env.example_path)
    assert len(rows) >= MIN_EXAMPLE_ROWS, f"{env.example_path} has {len(rows)} rows; ship at least {MIN_EXAMPLE_ROWS}"
    served = set(env.server_class.tools)
    offered: set[str] = set()
    for number, row in enumerate(rows, 1):
        try:
            task = TaskRow.model_validate(row)
        except ValidationError as exc:
            raise AssertionError(f"row {number}: {describe_validation_error(exc)}") from None
        names = {t.name for t in task.responses_create_params.function_tools}
        unknown = names - served
        assert not unknown, (f"row {number} offers tools the server does not have: {', '.join(sorted(unknown))} "
                             f"(its tools: {', '.join(sorted(served)) or 'none'})")
        offered |= names
    return rows, f"{len(rows)} rows; tools offered: {', '.join(sorted(offered)) or 'none'}"


async def _check_openai_types(rows: list[dict[str, Any]]) -> tuple[None, str]:
    if not rows:
        raise _Skip("no rows to check")
    try:
        from servers.kit.openai_types import check_request
    except ImportError:
        raise _Skip("the openai SDK is not installed (pip install openai)") from None
    for number, row in enumerate(rows, 1):
        try:
            check_request(row["responses_create_params"])
        except ValidationError as exc:
            raise AssertionError(f"row {number}: not a valid openai Responses request: "
                                 f"{describe_validation_error(exc)}") from None
        except ValueError as exc:
            raise AssertionError(f"row {number}: not a valid openai Responses request: {exc}") from None
    return None, f"{len(rows)} requests valid (every item; function tools carry strict)"


# ------------------------------------------------------------------------------------------ row errors


async def _check_row_errors(h: Harness, rows: list[dict[str, Any]] | None) -> tuple[None, str]:
    """Each example row without each of its fields, and with each holding a value of another JSON type: refused
    as the row's fault (4xx `invalid_row` naming the field), or served; never a crash."""
    if not rows:
        raise _Skip("needs example rows")
    own = sorted({key for row in rows for key in row if key != "responses_create_params"})
    if not own:
        raise _Skip("the example rows carry no fields of their own (nothing to check)")
    model = h.server.row_model
    if model is not None:
        for number, row in enumerate(rows, 1):
            problem = row_problem(model, row)
            assert problem is None, f"row {number}: its row_model refuses an example row: {problem}"
        own = [field.alias or key for key, field in model.model_fields.items()]
    refused = served = 0
    for label, name, broken in _broken_rows(own, rows):
        # With a row_model the server must refuse exactly what the model refuses; without one, either will do.
        must_refuse = model is not None and row_problem(model, broken) is not None
        if model is not None and not must_refuse:
            await _in_context(label, h.play(broken, Attempt()))
            served += 1
        elif await _refused(h, label, name, broken, must_refuse):
            refused += 1
        else:
            served += 1
    detail = f"{refused} rows missing or mistyping a field refused (4xx invalid_row naming it), {served} served"
    if model is None:
        detail += "; no row_model, so a mistyped field is served as it is (declare one to refuse it)"
    return None, detail


async def _refused(h: Harness, label: str, name: str, row: dict[str, Any], must_refuse: bool) -> bool:
    """Play a broken row (seed, then verify an empty answer in that session): whether the server refused it.
    A refusal must be a 4xx `invalid_row` naming `name` (a 5xx is a CheckFailure); with `must_refuse` both
    routes must refuse it."""
    episode = {**row, "response": {"output": [assistant_message("")]}}
    session = None
    for path, body in (("/seed_session", row), ("/verify", episode)):
        reply = await _in_context(label, h.post(path, body, session))
        if reply.status_code < 400 and not must_refuse:
            session = reply.headers.get(SESSION_HEADER, session)
            continue
        is_json = reply.headers.get("content-type", "").startswith("application/json")
        error = reply.json().get("error", {}) if is_json else {}
        assert 400 <= reply.status_code < 500 and error.get("type") == "invalid_row" and \
            name in error.get("message", ""), (f"{label}: {path} answered {reply.status_code} "
                                               f"{reply.text[:200]!r}, not a 4xx invalid_row naming `{name}`")
        if not must_refuse:
            return True
    return must_refuse


def _broken_rows(names: list[str], rows: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(label, field, row) for each example row without each named field it has, and with that field holding a
    value of another JSON type."""
    for number, row in enumerate(rows, 1):
        for name in names:
            if name in row:
                without = {k: v for k, v in row.items() if k != name}
                yield f"row {number} without `{name}`", name, without
                yield f"row {number} with `{name}` of another type", name, {**without, name: _other_type(row[name])}


def _other_type(value: Any) -> Any:
    """A JSON value of a different type than `value` (an object for a scalar or a list, a list for an object)."""
    return [1, "two"] if isinstance(value, dict) else {"unexpected": [1]}


def row_problem(model: type[BaseModel], row: dict[str, Any]) -> str | None:
    """Why a row model refuses the row's own fields (all but `responses_create_params`), or None."""
    try:
        model.model_validate({k: v for k, v in row.items() if k != "responses_create_params"})
    except ValidationError as exc:
        return describe_validation_error(exc, "row")
    return None


async def _in_context(label: str, step: Awaitable[Any]) -> Any:
    try:
        return await step
    except CheckFailure as exc:
        raise CheckFailure(f"{label}: {exc}") from None


# --------------------------------------------------------------------------------------------- rewards


async def _check_rewards(h: Harness, rows: list[dict[str, Any]] | None, lo: float,
                         hi: float) -> tuple[Baseline, str]:
    if not rows:
        raise _Skip("needs example rows")
    attempts = [h.attempts(row) for row in rows]
    rewards: dict[tuple[int, int], float] = {}
    for index, (row, pair) in enumerate(zip(rows, attempts, strict=True)):
        for which, attempt in enumerate(pair):
            body = await h.play(row, attempt)
            reward, label = body["reward"], ("correct", "incorrect")[which]
            assert not body.get("_ng_failure_class"), (
                f"row {index + 1}, {label} attempt: verify reported a failure ({body['_ng_failure_class']}): "
                f"{str(body.get('error', ''))[:300]}")
            assert is_reward(reward), f"row {index + 1}, {label} attempt: reward {reward!r} is not a finite number"
            assert lo <= reward <= hi, (f"row {index + 1}, {label} attempt: reward {reward} is outside the declared "
                                        f"reward_range {(lo, hi)}")
            rewards[(index, which)] = float(reward)
        assert rewards[(index, 0)] > rewards[(index, 1)], (
            f"row {index + 1}: the correct attempt got {rewards[(index, 0)]}, not more than the incorrect one's "
            f"{rewards[(index, 1)]}; check known_attempts and verify")
    correct = sorted({rewards[(i, 0)] for i in range(len(rows))})
    incorrect = sorted({rewards[(i, 1)] for i in range(len(rows))})
    detail = f"range {[lo, hi]}; correct got {_values(correct)}, incorrect {_values(incorrect)}"
    return Baseline(rows, attempts, rewards), detail


def _values(values: list[float]) -> str:
    return f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}..{values[-1]:g}"


def _need(baseline: Baseline | None) -> Baseline:
    if baseline is None:
        raise _Skip("needs the rewards check to pass")
    return baseline


# ------------------------------------------------------------------------------------- sessions, state


async def _check_isolation(h: Harness, baseline: Baseline | None, sessions: int) -> tuple[None, str]:
    """Interleave many sessions step by step; each must get the reward its attempt gets alone."""
    base = _need(baseline)
    cases = [base.cases()[i % len(base.cases())] for i in range(sessions)]
    rows = [base.rows[case[0]] for case in cases]
    attempts = [base.attempt(case) for case in cases]
    ids = await asyncio.gather(*(h.seed(row) for row in rows))
    outputs: list[list[dict[str, Any]]] = [[] for _ in cases]
    for step in range(max(len(a.calls) for a in attempts)):
        todo = [i for i, a in enumerate(attempts) if step < len(a.calls)]
        results = await asyncio.gather(*(h.call(attempts[i], step, ids[i]) for i in todo))
        for i, result in zip(todo, results, strict=True):
            outputs[i] += [function_call(attempts[i], step), result]
    verified = await asyncio.gather(*(h.verify(rows[i], outputs[i] + [assistant_message(attempts[i].answer)], ids[i])
                                      for i in range(len(cases))))
    for i, body in enumerate(verified):
        alone = base.rewards[cases[i]]
        assert body["reward"] == alone, (
            f"session {i} (row {cases[i][0] + 1}, {('correct', 'incorrect')[cases[i][1]]} attempt) got "
            f"{body['reward']} among {sessions} interleaved sessions but {alone} alone: sessions share state")
    return None, f"{sessions} interleaved sessions got the rewards they get alone"


async def _check_cleanup(h: Harness, baseline: Baseline | None, options: CheckOptions) -> tuple[None, str]:
    """Run many rollouts; afterwards no session, and no container on the server or its module, has grown."""
    base = _need(baseline)
    before = _container_sizes(h.server)
    gate = asyncio.Semaphore(options.concurrency)
    cases = base.cases()

    async def one(i: int) -> None:
        case = cases[i % len(cases)]
        async with gate:
            await h.play(base.rows[case[0]], base.attempt(case))

    await asyncio.gather(*(one(i) for i in range(options.rollouts)))
    left = len(h.server.sessions)
    assert left == 0, (f"{left} sessions are still held after {options.rollouts} finished rollouts; keep "
                       "end_session_on_verify on (or end the session yourself in verify)")
    grown = {name: size - before.get(name, 0) for name, size in _container_sizes(h.server).items()}
    leaks = {name: n for name, n in grown.items() if n >= max(1, options.rollouts // 10)}
    grew = ", ".join(f"{name} grew by {n}" for name, n in leaks.items())
    assert not leaks, f"per-rollout state kept outside the session: {grew} over {options.rollouts} rollouts; " \
                      "keep it in session.state"
    return None, f"{options.rollouts} rollouts, 0 sessions and no growing containers left"


def _container_sizes(server: ResourcesServer) -> dict[str, int]:
    """Sizes of the dicts, lists, sets and deques on the server object and in its class's module."""
    module = sys.modules.get(type(server).__module__)
    spaces = {"self": vars(server), "module": vars(module) if module else {}}
    sizes = {}
    for space, members in spaces.items():
        for name, value in list(members.items()):
            if isinstance(value, (dict, list, set)) or type(value).__name__ == "deque":
                sizes[f"{space}.{name}"] = len(value)
    return sizes


# ----------------------------------------------------------------------------------------- tool deadline


def _with_hanging_tool(cls: type[ResourcesServer]) -> type[ResourcesServer]:
    """The environment's class plus a tool that never returns."""

    async def gym_check_hang(self: Any, session: Session) -> dict:
        """A tool that hangs (added by `gym env test`)."""
        await asyncio.Event().wait()
        return {}

    return type(f"{cls.__name__}WithHangingTool", (cls,), {"gym_check_hang": tool(gym_check_hang)})


async def _check_tool_deadline(env: Environment, rows: list[dict[str, Any]] | None,
                               options: CheckOptions) -> tuple[None, str]:
    if not rows:
        raise _Skip("needs example rows")
    timeout_s, limit_s = options.tool_timeout_s, options.tool_timeout_s + options.deadline_grace_s
    async with harness(env, _with_hanging_tool(env.server_class), tool_timeout_s=timeout_s) as h:
        session = await h.seed(rows[0])
        hanging = asyncio.create_task(h.post("/gym_check_hang", {}, session))
        try:
            await h.seed(rows[0])  # the server keeps serving while the tool hangs
            reply = await asyncio.wait_for(asyncio.shield(hanging), limit_s)
        except TimeoutError:
            raise AssertionError(f"a hanging tool was not cut off within {limit_s:g} s; "
                                 "tools must run under the ResourcesServer's tool_timeout_s") from None
        finally:
            hanging.cancel()
    is_json = reply.headers.get("content-type", "").startswith("application/json")
    error = reply.json().get("error", {}) if is_json else {}
    assert 400 <= reply.status_code < 500 and error.get("type") == "tool_timeout", (
        f"a hanging tool answered {reply.status_code} {reply.text[:200]!r}, not a tool_timeout error the model sees")
    return None, f"cut off after tool_timeout_s={timeout_s:g} s with a tool_timeout error"


# ------------------------------------------------------------------------------- determinism, adversarial


async def _check_determinism(h: Harness, baseline: Baseline | None, repeats: int) -> tuple[None, str]:
    base = _need(baseline)
    for case in base.cases():
        for _ in range(repeats):
            reward = (await h.play(base.rows[case[0]], base.attempt(case)))["reward"]
            assert reward == base.rewards[case], (
                f"row {case[0] + 1}, {('correct', 'incorrect')[case[1]]} attempt: reward {reward} on a replay, "
                f"{base.rewards[case]} the first time; verify must be deterministic")
    return None, f"{len(base.cases())} attempts x {repeats} replays, same rewards"


async def _check_adversarial(h: Harness, rows: list[dict[str, Any]] | None, bounds: tuple[float, float],
                             timeout_s: float) -> tuple[None, str]:
    if not rows:
        raise _Skip("needs example rows")
    cases = adversarial_outputs()
    for row in rows[:2]:
        for label, output in cases:
            body = await _bounded(lambda: _verify_fresh(h, row, output), timeout_s, label)
            reward = body["reward"]
            assert is_reward(reward) and bounds[0] <= reward <= bounds[1], (
                f"{label}: reward {reward!r} is outside the declared reward_range {bounds}")
        for label, raw in raw_bodies(row):
            reply = await _bounded(lambda: h.post("/verify", None, None, raw=raw), timeout_s, label)
            assert reply.status_code in (200, 400, 413, 422), f"{label}: /verify answered {reply.status_code}"
    return None, f"{len(cases) + 3} hostile episodes x {min(2, len(rows))} rows: rewards in range, no crash"


async def _verify_fresh(h: Harness, row: dict[str, Any], output: list[dict[str, Any]]) -> dict[str, Any]:
    return await h.verify(row, output, await h.seed(row))


async def _bounded(make: Callable[[], Awaitable[Any]], timeout_s: float, label: str) -> Any:
    try:
        return await asyncio.wait_for(make(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"{label}: /verify took longer than {timeout_s:g} s; bound the grader's work") from None
    except CheckFailure as exc:
        raise CheckFailure(f"{label}: {exc}") from None
