"""The edge probes at the sizes of the issue (finding 3 and the registry's body in finding 1), against real server
processes with their memory watched. Slow: run by `make test-all` (`-m slow`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from gym_core.launcher import launch
from tests.security import probes

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.yaml"
MB = 1024 * 1024

pytestmark = pytest.mark.slow


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture(scope="module")
def stack():
    with launch(QUICKSTART, echo_logs=False) as running:
        yield running


def test_a_300_mb_unterminated_header_line_costs_the_server_no_memory(stack) -> None:
    server = stack.servers["weather"]
    before = rss(server.pid)
    reply = probes.unterminated_header(stack.url("weather"), 300 * MB)
    after = rss(server.pid)
    assert reply.status == 431
    assert after - before < 32 * MB, f"RSS grew {(after - before) / MB:.0f} MB"  # before the fix: +333 MB


def test_a_16_mb_header_is_refused_by_every_server(stack) -> None:
    for url in [stack.registry_url, *(stack.url(name) for name in stack.servers)]:
        assert probes.big_header(url, 16 * MB).status == 431, url


def test_a_50_mb_tool_argument_does_not_come_back(stack) -> None:
    argument = json.dumps({"city": "x" * (50 * MB)}).encode()
    before = rss(stack.servers["weather"].pid)
    reply = probes.post(stack.url("weather"), "/get_weather", argument)
    assert reply.status is not None and 400 <= reply.status < 500
    assert len(reply.raw) < 16 * 1024  # before the fix: a 52 MB reply
    assert rss(stack.servers["weather"].pid) - before < 256 * MB


def test_a_100_mb_body_to_the_registry_is_refused_as_it_arrives(stack) -> None:
    before = rss(os.getpid())  # the registry runs in the launcher's process: this one
    prefix = (b"POST /register HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + stack.auth.token.encode() + b"\r\n\r\n")
    chunk = b"100000\r\n" + b"x" * MB + b"\r\n"
    reply = probes.send_streaming(stack.registry_url, prefix, chunk * 4, len(prefix) + 100 * len(chunk))
    assert reply.status == 413 and len(reply.raw) < 2048  # before the fix: a 422 echoing 419 MB
    assert rss(os.getpid()) - before < 64 * MB  # before the fix: 87 MB -> 1.1 GB
    assert httpx.get(stack.registry_url + "/health", trust_env=False).status_code == 200
