"""The edge every server has, in front of both FastAPI's path and the fast lane: a pure-ASGI middleware.

In order: the stack token (admin routes whenever the stack has one, every route but /health when it is required),
the declared body size, the session (attached, resolved only when a route asks), the body as it arrives (size, and
a read timeout between chunks so a declared body that never comes does not hold the request), and a JSON 500 for
an unhandled bug. Requests refused before their body was read are answered with `connection: close`, so the server
never reads (or waits for) the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gym_core.auth import StackAuth
from gym_core.responses import error_response
from gym_core.sessions import SESSION_HEADER, RequestSession, SessionSigner, attach, cookie_name_for

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

# Routes that change what a stack is or runs: they need the stack token whenever the stack has one.
ADMIN_ROUTES = frozenset({("POST", "/v1/weights")})
_SESSION_KEY = SESSION_HEADER.lower().encode()


class BodyRefused(Exception):
    """The request body broke a limit (size, or time between chunks); `status` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EdgeMiddleware:
    """Pure-ASGI edge: stack token, body size and read time, lazily issued sessions, JSON 500s."""

    def __init__(self, app: Any, *, server_name: str, max_request_bytes: int, body_timeout_s: float,
                 signer: SessionSigner, auth: StackAuth, admin_routes: frozenset[tuple[str, str]]) -> None:
        self.app = app
        self.name = server_name
        self.max_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
        self.signer = signer
        self.auth = auth
        self.admin_routes = admin_routes
        self.cookie = cookie_name_for(server_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _header_map(scope)
        if self.auth.needs_token(scope["method"], scope["path"], self.admin_routes):
            if not self.auth.accepts(headers.get(b"authorization")):
                await self._send_error(send, 401, self._token_message(scope), None, close=True,
                                       extra=[(b"www-authenticate", b'Bearer realm="gym"')])
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._send_error(send, 413, self._too_large_message(), None, close=True)
            return
        session = self._session(headers)
        attach(scope, session)
        started = False

        async def send_with_session(message: ASGIMessage) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = session.response_headers()
                if extra:
                    message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, self._bounded(receive), send_with_session)
        except BodyRefused as exc:
            if not started:
                await self._send_error(send, exc.status, str(exc), None, close=True)
        except Exception as exc:
            log.exception("server %r: unhandled error in %s %s", self.name, scope.get("method"), scope.get("path"))
            if not started:
                message = (
                    f"server {self.name!r} failed on {scope.get('method')} {scope.get('path')} with "
                    f"{type(exc).__name__} (a bug in the server; its log has the traceback)"
                )
                await self._send_error(send_with_session, 500, message, "internal_error")

    def _session(self, headers: dict[bytes, bytes]) -> RequestSession:
        header = headers.get(_SESSION_KEY)
        cookie = None
        raw_cookie = headers.get(b"cookie")
        if raw_cookie:
            cookie = _cookie_value(raw_cookie.decode("latin-1"), self.cookie)
        return RequestSession(self.signer, self.name, self.cookie,
                              header.decode("latin-1") if header else None, cookie or None)

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` with the body counted against the size limit and each chunk waited for at most the timeout."""
        received = 0
        complete = False

        async def receive_bounded() -> ASGIMessage:
            nonlocal received, complete
            if complete:  # after the body, receive() only reports a disconnect: streaming responses wait on it
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                                       f"(server {self.name!r}); send the whole body promptly") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyRefused(413, self._too_large_message())
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return receive_bounded

    def _too_large_message(self) -> str:
        return (
            f"request body exceeds the {self.max_bytes}-byte limit of server {self.name!r}; "
            "raise max_request_bytes in its config or send less"
        )

    def _token_message(self, scope: Scope) -> str:
        what = "every route but /health" if self.auth.required else f"{scope['method']} {scope['path']}"
        return (f"server {self.name!r} needs the stack token for {what}: send `Authorization: Bearer <token>`. "
                "Clients started by `gym` find it themselves; others read the file named by GYM_AUTH_TOKEN_FILE "
                "or <runtime dir>/<registry host>-<port>/token (see the README, \"Security\")")

    @staticmethod
    async def _send_error(send: Send, status: int, message: str, error_type: str | None, *, close: bool = False,
                          extra: list[tuple[bytes, bytes]] | None = None) -> None:
        response = error_response(status, message, error_type)
        headers = response.raw_headers + (extra or []) + ([(b"connection", b"close")] if close else [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


def body_refused_cause(exc: BaseException) -> BodyRefused | None:
    """The `BodyRefused` behind an exception FastAPI raised while it read the body, if any."""
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, BodyRefused) else None


def _header_map(scope: Scope) -> dict[bytes, bytes]:
    # Repeated Cookie headers are joined as browsers would; other repeats keep the last value.
    headers: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        if key == b"cookie" and key in headers:
            headers[key] += b"; " + value
        else:
            headers[key] = value
    return headers


def _cookie_value(cookie_header: str, name: str) -> str | None:
    for part in cookie_header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None
