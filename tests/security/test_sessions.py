"""Sessions are bound to their rollout (issue 10, finding 2): issued and signed by the resources server, refused
when made up or forged, capped in number with the losses counted, and never created for calls that need none."""

from __future__ import annotations

import base64
import hashlib
import hmac

import httpx
import itsdangerous
import pytest

from environments.counter.app import Counter
from gym_core.server import SESSION_HEADER, serve_in_background
from servers.resources import ResourcesServer, Session, tool

ROW = {"responses_create_params": {"input": "count to 3"}, "target": 3}


class CounterWithClock(Counter):
    """Test double: the counter environment plus a tool that needs no session."""

    @tool
    async def clock(self) -> str:
        """What time it is (no rollout state involved)."""
        return "noon"


@pytest.fixture
async def counter():
    server = CounterWithClock("counter", {"max_sessions": 3})
    async with serve_in_background(server.build_app()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:  # keeps no cookies unless a test sends them
            yield server, http


async def seed(http: httpx.AsyncClient) -> str:
    reply = await http.post("/seed_session", json=ROW)
    assert reply.status_code == 200
    http.cookies.clear()
    return reply.headers[SESSION_HEADER]


async def test_a_rollouts_state_is_out_of_reach_of_a_made_up_or_forged_session(counter) -> None:
    _, http = counter
    token = await seed(http)
    assert (await http.post("/increment", json={"by": 2}, headers={SESSION_HEADER: token})).json() == {"count": 2}
    session_id = token.partition(".")[0]
    legacy = itsdangerous.Signer("CounterWithClock___counter", salt="gym-session").sign(session_id.encode()).decode()
    forged_mac = hmac.digest(b"guess", session_id.encode(), "sha256")
    forged = f"{session_id}.{base64.urlsafe_b64encode(forged_mac).rstrip(b'=').decode()}"
    for attempt in ({SESSION_HEADER: session_id},  # the bare id (what a log or a trajectory might show)
                    {SESSION_HEADER: forged},
                    {"cookie": f"gym_session_counter={legacy}"}):  # the old predictable cookie secret
        reply = await http.post("/increment", json={"by": 100}, headers=attempt)
        assert reply.status_code == 403 and reply.json()["error"]["type"] == "invalid_session"
        assert (await http.post("/seed_session", json=ROW, headers=attempt)).status_code == 403  # nor reset it
        http.cookies.clear()
    verified = await http.post("/verify", json={**ROW, "response": {"output": []}}, headers={SESSION_HEADER: token})
    assert verified.status_code == 200 and verified.json()["reward"] == 0.0  # count is still 2: untouched


async def test_the_secret_is_random_per_server_start() -> None:
    first, second = CounterWithClock("counter", {}), CounterWithClock("counter", {})
    tokens = []
    for server in (first, second):
        async with serve_in_background(server.build_app()) as url, httpx.AsyncClient(base_url=url) as http:
            tokens.append(await seed(http))
            if len(tokens) == 2:
                assert (await http.post("/increment", json={"by": 1}, headers={SESSION_HEADER: tokens[0]})
                        ).status_code == 403


async def test_sessions_are_capped_oldest_evicted_and_counted(counter) -> None:
    server, http = counter
    tokens = [await seed(http) for _ in range(5)]
    health = (await http.get("/health")).json()
    assert health["status"] == "ok"
    assert health["sessions"] == {"live": 3, "max": 3, "created": 5, "expired": 0, "evicted": 2}
    gone = await http.post("/increment", json={"by": 1}, headers={SESSION_HEADER: tokens[0]})
    assert gone.status_code == 410 and "max_sessions=3" in gone.json()["error"]["message"]
    kept = await http.post("/increment", json={"by": 1}, headers={SESSION_HEADER: tokens[-1]})
    assert kept.json() == {"count": 1}


async def test_session_less_calls_create_no_sessions(counter) -> None:
    server, http = counter
    for _ in range(50):
        reply = await http.post("/clock", json={})
        assert reply.status_code == 200
        assert SESSION_HEADER not in reply.headers and "set-cookie" not in reply.headers
    assert server.sessions.stats()["created"] == 0 and len(server.sessions) == 0


async def test_a_nemo_gym_cookie_client_keeps_its_rollout(counter) -> None:
    _, http = counter
    # NeMo Gym's simple_agent: no X-Session-Id, it sends back the cookie /seed_session set.
    seeded = await http.post("/seed_session", json=ROW)
    cookie = seeded.headers["set-cookie"].split(";")[0]
    for _ in range(3):
        assert (await http.post("/increment", json={"by": 1}, headers={"cookie": cookie})).status_code == 200
    http.cookies.clear()
    verified = await http.post("/verify", json={**ROW, "response": {"output": []}}, headers={"cookie": cookie})
    assert verified.json()["reward"] == 1.0


def test_session_signatures_are_hmac_sha256_of_the_id_under_the_servers_secret() -> None:
    from gym_core.sessions import SessionSigner

    signer = SessionSigner("configured")
    token = signer.token("0" * 32)
    key = hashlib.sha256(b"gym-session:configured").digest()
    mac = base64.urlsafe_b64encode(hmac.digest(key, b"0" * 32, "sha256")).rstrip(b"=").decode()
    assert token == "0" * 32 + "." + mac and signer.session_of(token) == "0" * 32
    assert signer.session_of(token[:-1] + ("A" if token[-1] != "A" else "B")) is None


class _Stateful(ResourcesServer):
    @tool
    async def note(self, session: Session, text: str) -> dict:
        """Keep a note in the rollout's state."""
        session.state.setdefault("notes", []).append(text)
        return {"notes": len(session.state["notes"])}


async def test_a_tool_that_needs_a_session_issues_one_when_none_is_sent() -> None:
    async with serve_in_background(_Stateful("notes", {}).build_app()) as url, httpx.AsyncClient(base_url=url) as http:
        first = await http.post("/note", json={"text": "a"})
        token = first.headers[SESSION_HEADER]
        http.cookies.clear()
        assert (await http.post("/note", json={"text": "b"}, headers={SESSION_HEADER: token})).json() == {"notes": 2}
