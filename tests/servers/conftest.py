"""Fixtures for the server tests: real uvicorn servers inside the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest
from fastapi import FastAPI

from gym_core.client import close_client
from gym_core.server import serve_in_background


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[FastAPI], Awaitable[str]]]:
    """`await serve(app)` starts `app` on a free loopback port and returns its URL; all stop at test end."""
    running: list[AbstractAsyncContextManager[str]] = []

    async def start(app: FastAPI) -> str:
        server = serve_in_background(app)
        url = await server.__aenter__()
        running.append(server)
        return url

    try:
        yield start
    finally:
        await close_client()
        # Stopped together: each stop waits out uvicorn's shutdown tick.
        await asyncio.gather(*(server.__aexit__(None, None, None) for server in running))


@pytest.fixture(scope="module")
def tok():
    """The builtin tiny model's chat tokenizer."""
    from model.tokenizer import ChatTokenizer

    return ChatTokenizer.from_pretrained("builtin:tiny")
