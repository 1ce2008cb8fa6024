"""Real processes for the fault suites: `gym up` and `gym rollout` as subprocesses, faults by pid, and the checks
every fault test ends with (each (task, repeat) exactly once in the output or the failures, no process left)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.processes import gone

ROOT = Path(__file__).parents[2]
WEATHER_ROWS = [json.loads(line) for line in
                (ROOT / "environments" / "weather" / "data" / "example.jsonl").read_text().splitlines()]


def quickstart(**blocks: dict[str, Any]) -> dict[str, Any]:
    """A config of examples/quickstart.yaml with each server's block updated by `blocks[name]`."""
    return {"include": [str(ROOT / "examples" / "quickstart.yaml")], "servers": blocks}


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return value


def line_count(path: Path) -> int:
    """Whole lines written so far (0 when the file does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class GymUp:
    """A `gym up` process, its registry, and every server pid it ever ran (restarts included)."""

    process: subprocess.Popen
    registry: str
    log: Path
    pids: set[int] = field(default_factory=set)

    def servers(self) -> dict[str, dict[str, Any]]:
        """The registry's entries by name; remembers their pids."""
        entries = httpx.get(f"{self.registry}/servers", timeout=10).json()
        self.pids.update(entry["pid"] for entry in entries)
        return {entry["name"]: entry for entry in entries}

    def pid(self, name: str) -> int:
        """The current pid of server `name`."""
        return self.servers()[name]["pid"]

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 90.0) -> dict[str, Any]:
        """The registry entry of `name` once a process other than `old_pid` registered."""
        def fresh() -> dict[str, Any] | None:
            entry = self.servers().get(name)
            return entry if entry and entry["pid"] != old_pid else None
        return until(fresh, timeout, f"server {name!r} to be restarted")


@contextlib.contextmanager
def gym_up(config: dict[str, Any], workdir: Path, start_timeout: float = 120.0) -> Iterator[GymUp]:
    """`gym up CONFIG --registry-port 0` until it answers; always stopped (SIGTERM, then SIGKILL) with every
    server it ever ran checked gone."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, log = workdir / "stack.yaml", workdir / "gym_up.log"
    config_path.write_text(yaml.safe_dump(config))
    with open(log, "wb") as out:  # a file, never a pipe: a full pipe would block the launcher's log threads
        process = subprocess.Popen([sys.executable, "-m", "gym_core.cli", "up", str(config_path),
                                    "--registry-port", "0"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   start_new_session=True)
    stack: GymUp | None = None
    try:
        def registry() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"gym up exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            return next((line.split()[1] for line in log.read_text().splitlines() if line.startswith("registry: ")),
                        None)
        stack = GymUp(process, until(registry, start_timeout, "gym up to start"), log)
        stack.servers()
        yield stack
    finally:
        if stack is not None:
            with contextlib.suppress(httpx.HTTPError):
                stack.servers()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        left = [pid for pid in (stack.pids if stack else set()) if not gone(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert not left, f"server processes left after gym up stopped: {left}"


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Task rows as JSONL."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@contextlib.contextmanager
def gym_rollout(registry: str, rows: Path, output: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`gym rollout --agent agent` as a subprocess (output in `<output>.log`); always gone on exit."""
    log = output.with_suffix(".log")
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "gym_core.cli", "rollout", "--agent", "agent",
                                    "--input", str(rows), "--output", str(output), "--registry", registry,
                                    "--no-progress", "--no-aggregate", *args], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=ROOT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        assert gone(process.pid)


def finish(process: subprocess.Popen, output: Path, timeout: float = 300.0) -> int:
    """Wait for a `gym rollout` to end; its exit status (its log is in the failure message if it hangs)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gym rollout still running after {timeout:g} s:\n"
                             f"{output.with_suffix('.log').read_text()[-3000:]}") from None


@dataclass
class Outcome:
    """What a collection left on disk, by (task, repeat)."""

    done: Counter
    failed: dict[tuple[int, int], list[dict[str, Any]]]

    @property
    def classes(self) -> Counter:
        """Failure classes of the keys that did not finish."""
        return Counter(rows[-1].get("_ng_failure_class") for key, rows in self.failed.items() if key not in self.done)


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a JSONL file, without a last line a killed writer left unfinished."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1] if line.strip()]


def outcome(output: Path) -> Outcome:
    """Read the output and its `_failures` sidecar."""
    done: Counter = Counter()
    for row in whole_lines(output):
        done[(row["_ng_task_index"], row["_ng_rollout_index"])] += 1
    failed: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in whole_lines(output.with_name(f"{output.stem}_failures.jsonl")):
        failed.setdefault((row["_ng_task_index"], row["_ng_rollout_index"]), []).append(row)
    return Outcome(done, failed)


def assert_each_pair_once(result: Outcome, tasks: int, repeats: int, allowed: set[str | None]) -> None:
    """Every (task, repeat) exactly once in the output, or (not there) failed with an allowed class."""
    every = {(t, r) for t in range(tasks) for r in range(repeats)}
    assert [key for key, n in result.done.items() if n > 1] == [], "a rollout is in the output twice"
    assert set(result.done) <= every
    missing = every - set(result.done)
    assert missing <= set(result.failed), f"{len(missing - set(result.failed))} rollouts are nowhere"
    assert set(result.classes) <= allowed, f"unexpected failure classes: {result.classes}"
