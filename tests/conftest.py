"""Fixtures for every test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gym_core.auth import RUNTIME_DIR_ENV


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Stack tokens written by tests go to a directory of the test run, not the user's runtime dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUNTIME_DIR_ENV, str(tmp_path_factory.mktemp("gym") / "run"))
        yield
