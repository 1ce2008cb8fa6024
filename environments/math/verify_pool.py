"""A pool of grading worker processes where every task has a deadline: a worker past it is killed and replaced.

A `ProcessPoolExecutor` cannot do this: a task it started cannot be cancelled, so one hung sympy simplification
would hold a worker (and the rollouts queued behind it) for as long as it runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# Workers are spawned, not forked: forking a server that runs threads and an event loop is unsafe.
_CONTEXT = multiprocessing.get_context("spawn")
WARMUP_TIMEOUT_S = 120.0  # first import of sympy on a busy machine


class TaskTimeout(Exception):
    """A task ran past its deadline; its worker was killed."""


class TaskFailed(Exception):
    """A task raised inside its worker (the message says what it raised)."""


def _serve(conn: Connection, warm_up: Callable[[], None] | None) -> None:
    """Worker main loop: run `(fn, args)` jobs from the pipe and send back ("ok", result) or ("error", text)."""
    if warm_up is not None:
        warm_up()
    conn.send(("ready", None))
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(*args)))
        except Exception as exc:  # a grading bug must reach the server as a failure, not kill the worker
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, warm_up: Callable[[], None] | None) -> None:
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child, warm_up), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
        """Run one job (blocking; called from a thread); raise TaskTimeout after killing a late worker."""
        if not self.ready:
            self._expect("ready", WARMUP_TIMEOUT_S)
            self.ready = True
        self.conn.send((fn, args))
        return self._expect("ok", timeout_s)

    def _expect(self, status: str, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            self.kill()
            raise TaskTimeout(f"no answer from the worker within {timeout_s:g} s")
        try:
            got, value = self.conn.recv()
        except EOFError:
            self.kill()
            raise TaskFailed("the worker process died") from None
        if got == "error":
            raise TaskFailed(value)
        if got != status:
            raise TaskFailed(f"worker protocol: expected {status!r}, got {got!r}")
        return value

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        """Kill the process and close the pipe."""
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class VerifyPool:
    """`size` worker processes; `await pool.run(fn, *args)` runs `fn` in one with a hard deadline."""

    def __init__(self, size: int, timeout_s: float, warm_up: Callable[[], None] | None = None) -> None:
        self.size, self.timeout_s, self._warm_up = size, timeout_s, warm_up
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker; TaskTimeout past the deadline, TaskFailed if it raised or its worker died."""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(self._spawn())
        worker = await self._idle.get()
        try:
            return await asyncio.to_thread(worker.call, fn, args, self.timeout_s)
        except asyncio.CancelledError:
            worker.kill()  # its thread may still be mid-job: the worker cannot be handed to another task
            raise
        finally:
            if not worker.alive():
                self._all.discard(worker)
                worker = self._spawn()
            self._idle.put_nowait(worker)

    def _spawn(self) -> _Worker:
        worker = _Worker(self._warm_up)
        self._all.add(worker)
        return worker

    def close(self) -> None:
        """Kill every worker."""
        for worker in self._all:
            worker.kill()
        self._all.clear()
        self._idle = None
