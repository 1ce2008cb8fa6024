"""Fixtures for the conformance walk: real servers in the test's event loop (as tests/servers starts them)."""

from tests.servers.conftest import serve  # noqa: F401  (re-exported fixture)
