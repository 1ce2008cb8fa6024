"""Fixtures for the server tests: real uvicorn servers inside the test's event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import FastAPI

from gym_core.client import close_client
from gym_core.server import serve_in_background


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[FastAPI], Awaitable[str]]]:
    """`await serve(app)` starts `app` on a free loopback port and returns its URL; all stop at test end."""
    stack = contextlib.AsyncExitStack()

    async def start(app: FastAPI) -> str:
        return await stack.enter_async_context(serve_in_background(app))

    try:
        yield start
    finally:
        await close_client()
        await stack.aclose()
