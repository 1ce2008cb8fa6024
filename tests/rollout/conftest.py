"""Fixtures for the collector tests: a stack of one fake agent (tests/rollout/fake_agent.py) in its own process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_core.client import REGISTRY_URL_ENV
from gym_core.config import load_config
from gym_core.launcher import Stack, launch

HERE = Path(__file__).parent
FAKE_AGENT = {"kind": "agent", "entrypoint": "fake_agent:FakeAgentForTests"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        with launch(load_config({"servers": {"fake": FAKE_AGENT}}), echo_logs=False) as running:
            yield running


@pytest.fixture
def registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI points the process-wide client at its registry through the environment; restore it after."""
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
