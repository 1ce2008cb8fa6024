"""Per-rollout sessions, issued and signed by the server that owns them.

A session travels as a token `<id>.<signature>`: the id is random and chosen by the server, the signature is an
HMAC-SHA256 of it under a secret drawn at random when the server starts (or `session_secret:` from its config,
for several workers of one server). The server sends it back on the response that created it, both as the
`X-Session-Id` header (our clients return that) and as the cookie `gym_session_<server>` (NeMo Gym clients return
that). A request naming a session this server did not issue is refused. Nothing is issued for a request whose
route never asks for its session: `session_id_of(request)` is what issues or checks it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import uuid
from typing import Any

from starlette.requests import Request

SESSION_HEADER = "X-Session-Id"
_SESSION_HEADER_KEY = SESSION_HEADER.lower().encode()
_STATE_KEY = "gym_session"
_TOKEN = re.compile(r"[0-9a-f]{32}\.[A-Za-z0-9_-]{43}")


class SessionRefused(Exception):
    """A request named a session this server did not issue (or in a malformed way)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SessionSigner:
    """Signs session ids with this server's secret and checks tokens; recent ids' tokens are cached."""

    def __init__(self, secret: str | bytes | None = None) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        self._key = hashlib.sha256(b"gym-session:" + raw).digest() if raw else secrets.token_bytes(32)
        self.token = functools.lru_cache(maxsize=16384)(self._sign)

    def _sign(self, session_id: str) -> str:
        mac = hmac.digest(self._key, session_id.encode(), "sha256")
        return f"{session_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    def session_of(self, token: str) -> str | None:
        """The session id a token carries, or None when this server did not sign it."""
        if not _TOKEN.fullmatch(token):
            return None
        session_id = token.partition(".")[0]
        return session_id if hmac.compare_digest(token.encode(), self.token(session_id).encode()) else None


class RequestSession:
    """One request's session, resolved only when its route asks: checked if presented, else issued."""

    __slots__ = ("signer", "server", "cookie_name", "header", "cookie", "id", "new")

    def __init__(self, signer: SessionSigner, server: str, cookie_name: str, header: str | None,
                 cookie: str | None) -> None:
        self.signer, self.server, self.cookie_name = signer, server, cookie_name
        self.header, self.cookie = header, cookie
        self.id: str | None = None
        self.new = False

    def resolve(self) -> str:
        """The session id: the presented token's (verified), or a freshly issued one."""
        if self.id is not None:
            return self.id
        presented = self.header or self.cookie
        if presented is None:
            self.id, self.new = uuid.uuid4().hex, True
            return self.id
        session_id = self.signer.session_of(presented)
        if session_id is None:
            where = SESSION_HEADER if self.header else f"cookie {self.cookie_name}"
            raise SessionRefused(403, f"the session in {where} was not issued by server {self.server!r}; send no "
                                      "session to get a new one (POST /seed_session), then send back the "
                                      f"{SESSION_HEADER} (or cookie) that server returned")
        self.id = session_id
        return session_id

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """The session header (and cookie, unless the request's cookie already held it) for the response."""
        if self.id is None:
            return []
        token = self.signer.token(self.id)
        out = [(_SESSION_HEADER_KEY, token.encode())]
        if self.cookie != token:
            out.append((b"set-cookie", f"{self.cookie_name}={token}; Path=/; HttpOnly; SameSite=lax".encode()))
        return out


def cookie_name_for(server_name: str) -> str:
    """The session cookie of a server: distinct per server, so one client can hold several servers' sessions."""
    return "gym_session_" + re.sub(r"[^A-Za-z0-9_]", "_", server_name)


def attach(scope: dict[str, Any], session: RequestSession) -> None:
    """Make `session` the one `session_id_of` resolves for this request."""
    scope.setdefault("state", {})[_STATE_KEY] = session


def attached(scope: dict[str, Any]) -> RequestSession | None:
    """The request's session object, if the edge attached one."""
    state = scope.get("state")
    return state.get(_STATE_KEY) if state else None


def session_id_of(request: Request) -> str:
    """The rollout's session id: the presented session if this server issued it, else a new one it issues now.

    Raises `SessionRefused` (a 403 through the server's handlers) for a session from elsewhere.
    """
    session = attached(request.scope)
    if session is None:
        raise RuntimeError("session_id_of needs a GymServer app (its edge issues and checks sessions)")
    return session.resolve()


def session_is_new(request: Request) -> bool:
    """Whether this request's session was issued by this very request (no earlier state can exist)."""
    session = attached(request.scope)
    return session is not None and session.new
