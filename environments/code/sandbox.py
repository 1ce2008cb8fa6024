"""Run model-written Python against hidden tests in a sandboxed process (see `runner.py` for the inside).

The server side: start `python -I -S runner.py` with a clean environment in its own session, hand it the job
on stdin, read its one result line (capped), and kill its whole process group at the wall-clock deadline. The
event loop only waits on pipes; nothing here blocks it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from gym_core.protocol import dumps, loads

RUNNER = Path(__file__).with_name("runner.py")
# All the sandboxed process gets: no server secrets, no PYTHON* variables, no proxies.
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
MAX_RESULT_BYTES = 4 << 20
MAX_STDERR_BYTES = 16 << 10


class SandboxLimits(BaseModel):
    """Limits for one test (each test runs in a fresh process) and for the whole run."""

    cpu_s: float = Field(2.0, gt=0)  # CPU seconds per test (RLIMIT_CPU)
    wall_s: float = Field(6.0, gt=0)  # wall-clock seconds per test (sleeping code is cut here)
    memory_mb: int = Field(512, ge=64)  # address space per test (RLIMIT_AS)
    file_mb: int = Field(8, ge=1)  # largest file a test may write (RLIMIT_FSIZE)
    tmpfs_mb: int = Field(32, ge=1)  # size of the empty work directory (a tmpfs, with namespaces)
    open_files: int = Field(64, ge=16)  # RLIMIT_NOFILE
    processes: int = Field(16, ge=1)  # RLIMIT_NPROC (per sandbox uid as root)
    output_bytes: int = Field(64 << 10, ge=1024)  # stdout + stderr kept per test; the rest is dropped
    startup_s: float = Field(20.0, gt=0)  # the runner's own start and teardown, on top of the tests' time
    namespaces: bool = True  # use network/mount/pid namespaces where the kernel allows it


@dataclass
class SandboxRun:
    """What happened: one result per test (`passed`, `reason`, `time_s`) and the isolation in effect."""

    results: list[dict[str, Any]]
    isolation: dict[str, Any]
    error: str | None = None  # the sandbox itself failed (every test then failed with this reason)


async def run_tests(code: str, tests: list[dict[str, Any]], limits: SandboxLimits) -> SandboxRun:
    """Run `code` against `tests` (dicts of kind "call" / "function" / "stdio") in a fresh sandbox."""
    workdir = tempfile.mkdtemp(prefix="gym-code-")  # used only where namespaces are not (else a tmpfs)
    job = {"code": code, "tests": tests, "limits": limits.model_dump(), "namespaces": limits.namespaces,
           "workdir": workdir}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(RUNNER), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=CLEAN_ENV, cwd="/", start_new_session=True)
    deadline = limits.startup_s + len(tests) * (limits.wall_s + 0.5)
    try:
        stdout, stderr = await asyncio.wait_for(_communicate(proc, dumps(job)), deadline)
    except TimeoutError:
        return _failed(tests, f"the sandbox ran past its deadline of {deadline:g} s and was killed")
    finally:
        _kill_group(proc)
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        body = loads(stdout.strip().rsplit(b"\n", 1)[-1])
        return SandboxRun(body["results"], body["isolation"])
    except (ValueError, KeyError, TypeError, IndexError):
        detail = stderr.decode("utf-8", "replace").strip()[-800:] or f"exit status {proc.returncode}"
        return _failed(tests, f"the sandbox failed: {detail}")


async def _communicate(proc: asyncio.subprocess.Process, job: bytes) -> tuple[bytes, bytes]:
    """Send the job, read both pipes to EOF keeping at most the caps (a flood is drained, not stored)."""
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(job)
    await proc.stdin.drain()
    proc.stdin.close()
    stdout, stderr = await asyncio.gather(_read_capped(proc.stdout, MAX_RESULT_BYTES),
                                          _read_capped(proc.stderr, MAX_STDERR_BYTES))
    await proc.wait()
    return stdout, stderr


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the runner's whole process group (it leads one: start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _failed(tests: list[dict[str, Any]], reason: str) -> SandboxRun:
    return SandboxRun([{"passed": False, "reason": reason, "time_s": None} for _ in tests], {}, error=reason)
