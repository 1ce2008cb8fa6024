"""Middleware an environment adds is never skipped: with any, the fast lane is off and every route sees it."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

from gym_core.server import SESSION_HEADER, JSONResponse
from servers.resources import ResourcesServer, Session, tool


class Audited(ResourcesServer):
    """An environment that stamps every response and counts requests in two kinds of middleware."""

    seen: list[str]

    def add_routes(self, app: FastAPI) -> None:
        super().add_routes(app)
        self.seen = []

        async def stamp(request: Request, call_next):  # noqa: ANN001, ANN202 (Starlette's middleware shape)
            response = await call_next(request)
            response.headers["x-audited"] = "yes"
            return response

        app.add_middleware(BaseHTTPMiddleware, dispatch=stamp)

        @app.middleware("http")
        async def count(request: Request, call_next):  # noqa: ANN001, ANN202
            self.seen.append(request.url.path)
            return await call_next(request)

    @tool
    async def ping(self, session: Session) -> dict:
        """Answer pong."""
        return {"pong": True}

    async def verify(self, row, session) -> float:  # noqa: ANN001
        return 1.0


class Plain(Audited):
    """The same environment without middleware."""

    def add_routes(self, app: FastAPI) -> None:
        ResourcesServer.add_routes(self, app)
        self.seen = []


async def test_routes_the_fast_lane_took_now_pass_the_environments_middleware() -> None:
    server = Audited("audited", {})
    app = server.build_app()
    assert app._lane() == {}  # no fast lane with middleware beyond the edge
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        row = {"responses_create_params": {"input": "hi"}, "response": {"output": []}}
        seeded = await http.post("/seed_session", json=row)
        session = {SESSION_HEADER: seeded.headers[SESSION_HEADER]}  # the edge still issues sessions
        assert seeded.status_code == 200 and seeded.headers["x-audited"] == "yes"
        for path, body in (("/ping", {}), ("/verify", row)):
            reply = await http.post(path, json=body, headers=session)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-audited"] == "yes"
    assert server.seen == ["/seed_session", "/ping", "/verify"]


async def test_without_middleware_the_fast_lane_stays() -> None:
    app = Plain("plain", {}).build_app()
    assert {("POST", "/ping"), ("POST", "/verify"), ("POST", "/seed_session")} <= set(app._lane())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        reply = await http.post("/ping", json={})
        assert reply.json() == {"pong": True} and "x-audited" not in reply.headers


def test_error_bodies_are_the_errorbody_schema() -> None:
    from gym_core.protocol import ErrorBody
    from gym_core.server import error_response

    response = error_response(422, "bad field", "invalid_row")
    assert isinstance(response, JSONResponse)
    assert ErrorBody.model_validate_json(response.body).error.type == "invalid_row"
