"""GymServer base: health, JSON error bodies, the body-size limit, sessions, lifespan hooks."""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from gym_core.protocol import TaskRow
from gym_core.server import (
    SESSION_HEADER,
    GymServer,
    JSONResponse,
    ServerConfig,
    serve_in_background,
    session_id_of,
)


class EchoConfig(ServerConfig):
    greeting: str = "hi"


class EchoServer(GymServer):
    """A small server exercising the base: a typed route, a bug, a 404 of its own, a session echo."""

    kind = "resources"
    config_model = EchoConfig

    def __init__(self, name: str, config: dict) -> None:
        super().__init__(name, config)
        self.events: list[str] = []

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/row")
        async def row(body: TaskRow) -> dict:
            return {"extra": body.extra, "greeting": self.config.greeting}

        @app.post("/bug")
        async def bug() -> dict:
            raise RuntimeError("password=hunter2 leaked in a repr")

        @app.post("/lookup")
        async def lookup() -> dict:
            raise HTTPException(404, "unknown tool 'teleport'; tools: get_weather")

        @app.post("/session")
        async def session(request: Request) -> dict:
            return {"session_id": session_id_of(request)}

        # The same behaviours on the fast lane (exact path, `async def f(request) -> Response`).
        @app.post("/fast/session")
        async def fast_session(request: Request) -> JSONResponse:
            return JSONResponse({"session_id": session_id_of(request), "bytes": len(await request.body())})

        @app.post("/fast/lookup")
        async def fast_lookup(request: Request) -> JSONResponse:
            raise HTTPException(404, "unknown tool 'teleport'; tools: get_weather")

        @app.post("/fast/bug")
        async def fast_bug(request: Request) -> JSONResponse:
            raise RuntimeError("password=hunter2 leaked in a repr")

    async def startup(self) -> None:
        self.events.append("startup")

    async def shutdown(self) -> None:
        self.events.append("shutdown")


@pytest.fixture
async def server() -> AsyncIterator[tuple[EchoServer, httpx.AsyncClient]]:
    echo = EchoServer("echo", {"greeting": "hello", "max_request_bytes": 4096})
    # A client that keeps no cookies, like ours and NeMo Gym's: each test sends the cookie it means to.
    no_jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    async with serve_in_background(echo.build_app()) as url, httpx.AsyncClient(base_url=url, cookies=no_jar) as http:
        yield echo, http


async def test_health_on_both_paths(server) -> None:
    _, http = server
    for path in ("/health", "/"):
        response = await http.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "name": "echo", "kind": "resources"}


async def test_config_is_validated_once_into_the_model() -> None:
    assert EchoServer("e", {"greeting": "yo", "kind": "resources"}).config.greeting == "yo"
    with pytest.raises(ValueError, match=r"invalid config for server .e.: max_request_bytes: Input should be a valid integer"):
        EchoServer("e", {"max_request_bytes": "lots"})


async def test_invalid_input_is_422_naming_the_field(server) -> None:
    _, http = server
    response = await http.post("/row", json={"responses_create_params": {"input": 3}, "secret": "s3cr3t"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert "responses_create_params.input" in error["message"]
    assert "s3cr3t" not in response.text and "tagged-union" not in response.text
    response = await http.post("/row", json={"responses_create_params": {"input": [{"role": "user"}]}})
    assert response.json()["error"]["message"] == "invalid request: body.responses_create_params.input.0.content: Field required"
    response = await http.post("/row", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]["message"]


async def test_valid_row_reaches_the_route(server) -> None:
    _, http = server
    response = await http.post("/row", json={"responses_create_params": {"input": "x"}, "expected": 1})
    assert response.json() == {"extra": {"expected": 1}, "greeting": "hello"}


async def test_unknown_route_and_unknown_tool_are_404(server) -> None:
    _, http = server
    response = await http.post("/teleport", json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert "/teleport" in response.json()["error"]["message"] and "/row" in response.json()["error"]["message"]
    response = await http.post("/lookup", json={})
    assert response.status_code == 404
    assert response.json() == {"error": {"type": "not_found", "message": "unknown tool 'teleport'; tools: get_weather"}}
    response = await http.get("/row")
    assert response.status_code == 405 and response.json()["error"]["type"] == "method_not_allowed"


async def test_bug_is_500_without_repr_and_logged(server, caplog) -> None:
    _, http = server
    with caplog.at_level(logging.ERROR, logger="gym_core.server"):
        response = await http.post("/bug", json={})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal_error" and "RuntimeError" in error["message"]
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert any(record.exc_info and "hunter2" in str(record.exc_info[1]) for record in caplog.records)


async def test_body_over_the_limit_is_413(server) -> None:
    _, http = server
    response = await http.post("/row", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
    assert "4096" in response.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit must count what arrives
        for _ in range(10):
            yield b" " * 1000

    response = await http.post("/row", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"


async def test_session_is_issued_by_the_server_and_returned_in_header_and_cookie(server) -> None:
    _, http = server
    first = await http.post("/session")
    session_id = first.json()["session_id"]
    token = first.headers[SESSION_HEADER]
    assert token.startswith(session_id + ".") and len(session_id) == 32  # the id, signed
    assert first.headers["set-cookie"].startswith(f"gym_session_echo={token};")
    again = await http.post("/session", headers={SESSION_HEADER: token})
    assert again.json()["session_id"] == session_id and again.headers[SESSION_HEADER] == token


async def test_session_cookie_carries_the_id_for_cookie_clients(server) -> None:
    _, http = server
    first = await http.post("/session")  # a NeMo Gym client: no header, keeps the cookie
    session_id = first.json()["session_id"]
    cookie = first.headers["set-cookie"].split(";")[0]
    again = await http.post("/session", headers={"cookie": cookie})
    assert again.json()["session_id"] == session_id
    assert "set-cookie" not in again.headers  # already valid: no need to send it again
    other = await http.post("/session")
    assert other.json()["session_id"] != session_id


@pytest.mark.parametrize("presented", [
    {SESSION_HEADER: "rollout-7"},  # an id the client made up
    {SESSION_HEADER: "0" * 32 + "." + "A" * 43},  # the right shape, a forged signature
    {SESSION_HEADER: "abc; Domain=evil.example"},  # cookie syntax smuggled into the header
    {"cookie": "gym_session_echo=chosen-id.forged"},
])
async def test_a_session_this_server_did_not_issue_is_refused(server, presented) -> None:
    _, http = server
    response = await http.post("/session", headers=presented)
    assert response.status_code == 403 and response.json()["error"]["type"] == "invalid_session"
    assert "set-cookie" not in response.headers and SESSION_HEADER not in response.headers


async def test_another_servers_session_is_refused() -> None:
    issuer, other = EchoServer("echo", {}), EchoServer("echo", {})  # same class and name: the secret still differs
    async with serve_in_background(issuer.build_app()) as a, serve_in_background(other.build_app()) as b:
        async with httpx.AsyncClient() as http:
            token = (await http.post(a + "/session")).headers[SESSION_HEADER]
            assert (await http.post(b + "/session", headers={SESSION_HEADER: token})).status_code == 403


async def test_a_configured_session_secret_is_shared_by_workers() -> None:
    one, two = (EchoServer("echo", {"session_secret": "shared"}) for _ in range(2))
    async with serve_in_background(one.build_app()) as a, serve_in_background(two.build_app()) as b:
        async with httpx.AsyncClient() as http:
            token = (await http.post(a + "/session")).headers[SESSION_HEADER]
            assert (await http.post(b + "/session", headers={SESSION_HEADER: token})).status_code == 200
    assert "shared" not in repr(one.config)


async def test_routes_that_never_ask_issue_no_session(server) -> None:
    _, http = server
    response = await http.post("/row", json={"responses_create_params": {"input": "x"}},
                               headers={SESSION_HEADER: "made-up"})  # not asked for: neither checked nor issued
    assert response.status_code == 200
    assert SESSION_HEADER not in response.headers and "set-cookie" not in response.headers


async def test_session_id_of_needs_the_edge() -> None:
    app = FastAPI()

    @app.get("/")
    async def root(request: Request) -> dict:
        return {"a": session_id_of(request)}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        with pytest.raises(RuntimeError, match="needs a GymServer app"):
            await http.get("/", headers={SESSION_HEADER: "s1"})


async def test_lifespan_runs_startup_then_shutdown() -> None:
    echo = EchoServer("echo", {})
    async with serve_in_background(echo.build_app()) as url:
        assert echo.events == ["startup"]
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/health")).status_code == 200
    assert echo.events == ["startup", "shutdown"]


async def test_config_may_be_a_model_instance() -> None:
    class Tiny(BaseModel):
        greeting: str = "hey"

    assert EchoServer("e", Tiny()).config.greeting == "hey"  # type: ignore[arg-type]


async def test_fast_lane_takes_plain_routes_and_keeps_the_edge(server) -> None:
    echo, http = server
    lane = set(echo.build_app()._lane())
    assert {("POST", "/fast/session"), ("POST", "/fast/lookup"), ("POST", "/fast/bug")} <= lane
    assert not lane & {("POST", "/session"), ("POST", "/row"), ("GET", "/health")}  # dict/typed: FastAPI's path
    first = await http.post("/fast/session")
    session_id = first.json()["session_id"]
    assert first.json()["bytes"] == 0 and first.headers[SESSION_HEADER].startswith(session_id + ".")
    cookie = first.headers["set-cookie"].split(";")[0]
    again = await http.post("/fast/session", headers={"cookie": cookie})
    assert again.json()["session_id"] == session_id and "set-cookie" not in again.headers
    forged = await http.post("/fast/session", headers={"cookie": f"gym_session_echo={session_id}.forged"})
    assert forged.status_code == 403 and forged.json()["error"]["type"] == "invalid_session"
    too_big = await http.post("/fast/session", content=b"x" * 5000)
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "payload_too_large"
    missing = await http.post("/fast/lookup")
    assert missing.status_code == 404 and missing.json()["error"]["message"].startswith("unknown tool 'teleport'")
    bug = await http.post("/fast/bug")
    assert bug.status_code == 500 and bug.json()["error"]["type"] == "internal_error" and "hunter2" not in bug.text
    assert (await http.get("/fast/session")).status_code == 405  # other methods take FastAPI's path


async def test_fast_lane_keeps_the_router_order() -> None:
    class Shadowed(EchoServer):
        def add_routes(self, app: FastAPI) -> None:
            @app.post("/{name}")
            async def anything(name: str) -> dict:
                return {"name": name}

            @app.post("/late")
            async def late(request: Request) -> JSONResponse:
                return JSONResponse({"late": True})

    app = Shadowed("s", {}).build_app()
    assert ("POST", "/late") not in app._lane()  # the pattern before it wins, as in the router
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.post("/late")).json() == {"name": "late"}
