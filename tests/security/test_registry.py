"""The registry is locked (issue 10, finding 1): its changes need the stack token, a live name is not handed to a
decoy, and a browser page cannot stop the stack, token or not."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import pytest

from gym_core.auth import StackAuth
from gym_core.registry import Registry, RegistryService

TOKEN = "t0ken-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def registry():
    stopped = threading.Event()
    service = RegistryService(Registry(on_shutdown=stopped.set, auth=StackAuth(TOKEN)), port=0)
    service.start()
    try:
        with httpx.Client(base_url=service.url, timeout=10, trust_env=False) as http:
            yield service, http, stopped
    finally:
        service.stop()


def info(name: str, pid: int, url: str = "http://127.0.0.1:1") -> dict:
    return {"name": name, "kind": "agent", "url": url, "pid": pid}


def test_changes_need_the_token(registry) -> None:
    service, http, stopped = registry
    assert http.post("/register", json=info("agent", os.getpid())).status_code == 401
    assert http.post("/register", json=info("agent", os.getpid()), headers={"authorization": "Bearer nope"}
                     ).status_code == 401
    assert http.post("/register", json=info("agent", os.getpid()), headers=AUTH).status_code == 200
    assert http.post("/deregister", json={"name": "agent"}).status_code == 401
    reply = http.post("/shutdown", json={})
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "unauthorized"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert not stopped.is_set() and service.registry.get("agent") is not None
    # Reads stay open on loopback (auth: admin), like /health.
    assert http.get("/servers").status_code == 200 and http.get("/servers/agent").status_code == 200
    assert http.post("/shutdown", json={}, headers=AUTH).json() == {"status": "stopping"} and stopped.is_set()


def test_a_decoy_cannot_take_a_live_servers_name(registry) -> None:
    _, http, _ = registry
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert http.post("/register", json=info("agent", holder.pid, "http://127.0.0.1:2"), headers=AUTH).is_success
        decoy = http.post("/register", json=info("agent", os.getpid(), "http://127.0.0.1:666"), headers=AUTH)
        assert decoy.status_code == 409 and str(holder.pid) in decoy.json()["error"]["message"]
        assert http.get("/servers/agent").json()["url"] == "http://127.0.0.1:2"
        # The holder itself may re-register (a new URL), and once it is gone its name is free again.
        assert http.post("/register", json=info("agent", holder.pid, "http://127.0.0.1:3"), headers=AUTH).is_success
    finally:
        holder.kill()
        holder.wait()
    assert http.post("/register", json=info("agent", os.getpid(), "http://127.0.0.1:4"), headers=AUTH).is_success


@pytest.mark.parametrize("headers", [
    {"content-type": "text/plain"},  # a <form> or fetch() with no preflight
    {"content-type": "application/json", "origin": "http://evil.example"},
    {"content-type": "application/json", "sec-fetch-site": "cross-site"},
], ids=["text-plain", "foreign-origin", "cross-site-fetch"])
def test_a_web_page_cannot_stop_the_stack_even_without_a_token(headers: dict) -> None:
    stopped = threading.Event()
    service = RegistryService(Registry(on_shutdown=stopped.set), port=0)  # no token at all
    service.start()
    try:
        reply = httpx.post(f"{service.url}/shutdown", content=b"{}", headers=headers, trust_env=False)
        assert reply.status_code in (403, 415) and not stopped.is_set()
        reply = httpx.post(f"{service.url}/register", content=b'{"name":"agent","kind":"agent","url":"u","pid":1}',
                           headers=headers, trust_env=False)
        assert reply.status_code in (403, 415) and service.registry.get("agent") is None
        assert httpx.post(f"{service.url}/shutdown", json={}, trust_env=False).status_code == 200
        assert stopped.is_set()
    finally:
        service.stop()


def test_a_huge_body_is_refused_without_reading_or_echoing_it(registry) -> None:
    _, http, _ = registry

    def body():  # 100 MB, streamed: only what the registry reads is ever produced
        for _ in range(100):
            yield b"x" * (1024 * 1024)

    reply = http.post("/register", content=body(), headers={**AUTH, "content-type": "application/json"})
    assert reply.status_code == 413 and len(reply.content) < 1024
    reply = http.post("/register", content=b'{"name": NaN, "kind": "a", "url": "u", "pid": 1}',
                      headers={**AUTH, "content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_request"
    reply = http.post("/register", json={"name": "x" * 50_000, "kind": 1}, headers=AUTH)
    assert reply.status_code == 422 and "xxxxxxxxxx" not in reply.text
