"""Test doubles the fault tests start as real server processes (`entrypoint: tests.faults.doubles:...`)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import ClassVar

from fastapi import FastAPI

from gym_core.server import GymServer


class IoPhaseStallServerForTests(GymServer):
    """Test double: `POST /stall?seconds=S` freezes the loop S seconds inside its I/O phase.

    A SIGSTOP of a busy server usually lands while the loop dispatches socket events; this reproduces that
    point exactly: the stall runs in a reader callback (called from the I/O poll, like `data_received`), after
    which the loop runs its overdue timers before it polls sockets again.
    """

    kind: ClassVar[str] = "resources"

    async def startup(self) -> None:
        """Open the pipe whose reader callback stalls."""
        self._read_fd, self._write_fd = os.pipe()
        asyncio.get_running_loop().add_reader(self._read_fd, self._stall)

    async def shutdown(self) -> None:
        """Close the pipe."""
        asyncio.get_running_loop().remove_reader(self._read_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _stall(self) -> None:
        time.sleep(float(os.read(self._read_fd, 64)))

    def add_routes(self, app: FastAPI) -> None:
        """Register /stall."""

        @app.post("/stall")
        async def stall(seconds: float) -> dict:
            os.write(self._write_fd, str(seconds).encode())
            return {"stall_s": seconds}
