"""Several rollouts side by side on one in-process server: each seeded on its own server-issued session."""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from gym_core.server import SESSION_HEADER


def cookieless_client(app: FastAPI) -> TestClient:
    """A TestClient that keeps no cookies, so each request names its session explicitly (or starts a new one)."""
    return TestClient(app, cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))


def seed(client: TestClient, row: dict[str, Any]) -> dict[str, str]:
    """Seed a new rollout with `row`; the headers that name its session on later calls."""
    reply = client.post("/seed_session", json=row)
    assert reply.status_code == 200, reply.text
    return {SESSION_HEADER: reply.headers[SESSION_HEADER]}


# For a TestClient whose cookie jar carries one session across many /verify calls: /verify ends a session by
# default, and the server then refuses the ended one (410) until /seed_session starts another.
KEEP_SESSIONS: dict[str, Any] = {"end_session_on_verify": False}
