"""The stack token: who may change a stack, and (with `auth: required`) who may call it at all.

`gym up` makes one random token per stack (or takes `auth_token:` from the YAML, or $GYM_AUTH_TOKEN) and writes it
to a file only the user can read, inside a runtime directory only the user can enter:
`<runtime dir>/<host>-<port>/token` for the registry at http://<host>:<port>, where the runtime dir is
$GYM_RUNTIME_DIR, else $XDG_RUNTIME_DIR/gym-rl, else <tmp>/gym-rl-<uid>. Servers it starts get that file's path
in $GYM_AUTH_TOKEN_FILE (a path, never the token); `gym status/down/rollout` and the Python API find the file from
the registry URL. Clients send the token as `Authorization: Bearer <token>`, which is also what the official
`openai` client sends for its `api_key`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

AUTH_TOKEN_ENV = "GYM_AUTH_TOKEN"
AUTH_TOKEN_FILE_ENV = "GYM_AUTH_TOKEN_FILE"
RUNTIME_DIR_ENV = "GYM_RUNTIME_DIR"
TOKEN_FILE_NAME = "token"
# Open to everyone, whatever the stack's mode: liveness probes carry no credentials.
OPEN_ROUTES = frozenset({("GET", "/health"), ("GET", "/")})


class AuthError(RuntimeError):
    """The token cannot be stored or read safely; the message says what to fix."""


@dataclass(frozen=True)
class StackAuth:
    """A server's view of the stack token: the token (None: no stack) and whether every route needs it."""

    token: str | None = field(default=None, repr=False)
    required: bool = False

    def for_host(self, host: str) -> StackAuth:
        """This policy for a server bound to `host`: beyond loopback every route needs the token."""
        if is_loopback(host):
            return self
        if self.token is None:
            raise AuthError(f"a server bound to {host} (beyond loopback) needs a stack token: start it with `gym up`, "
                            f"or set {AUTH_TOKEN_ENV} or {AUTH_TOKEN_FILE_ENV}")
        return StackAuth(self.token, required=True)

    def needs_token(self, method: str, path: str, admin_routes: frozenset[tuple[str, str]]) -> bool:
        """Whether a request to this route must carry the token."""
        if self.token is None or (method, path) in OPEN_ROUTES:
            return False
        return self.required or (method, path) in admin_routes

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an `Authorization` header value carries this token (constant-time compare)."""
        if self.token is None:
            return True
        if authorization is None:
            return False
        scheme, _, value = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token.encode())

    def headers(self) -> dict[str, str]:
        """The header a client sends to prove it belongs to the stack ({} without a token)."""
        return bearer(self.token)


def bearer(token: str | None) -> dict[str, str]:
    """`{"authorization": "Bearer <token>"}`, or {} for no token."""
    return {"authorization": f"Bearer {token}"} if token else {}


def new_token() -> str:
    """A fresh random stack token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; False for 0.0.0.0, a LAN address or a name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------ token files


def runtime_dir(create: bool = False) -> Path:
    """The per-user directory holding stack tokens, checked to be ours and closed to others."""
    configured = os.environ.get(RUNTIME_DIR_ENV)
    if configured:
        path = Path(configured)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "gym-rl"
    else:
        path = Path(tempfile.gettempdir()) / f"gym-rl-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
    if path.exists() or create:
        _check_private(path, directory=True)
    return path


def stack_dir(registry_url: str) -> Path:
    """Where the stack behind `registry_url` keeps its token: `<runtime dir>/<host>-<port>`."""
    url = httpx.URL(registry_url)
    return runtime_dir() / f"{url.host}-{url.port or 80}"


def write_token(registry_url: str, token: str) -> Path:
    """Store the stack's token (0600, in a 0700 directory); returns the file's path."""
    runtime_dir(create=True)
    directory = stack_dir(registry_url)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    _check_private(directory, directory=True)
    path = directory / TOKEN_FILE_NAME
    staging = directory / f".{TOKEN_FILE_NAME}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    os.replace(staging, path)  # a stale token of a crashed stack on the same port is replaced whole
    return path


def remove_token(path: Path) -> None:
    """Delete a stack's token file and its directory (at `gym down`)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def read_token_file(path: str | Path) -> str:
    """The token in `path`, refused when others could read or replace the file."""
    path = Path(path)
    try:
        _check_private(path, directory=False)
        token = path.read_text().strip()
    except FileNotFoundError:
        raise AuthError(f"the stack token file {path} does not exist; is `gym up` running? "
                        f"(it is named by {AUTH_TOKEN_FILE_ENV} or found from the registry URL)") from None
    if not token:
        raise AuthError(f"the stack token file {path} is empty")
    return token


def find_token(registry_url: str) -> str | None:
    """The stack token a client should send: $GYM_AUTH_TOKEN, $GYM_AUTH_TOKEN_FILE, else the registry's file."""
    if os.environ.get(AUTH_TOKEN_ENV):
        return os.environ[AUTH_TOKEN_ENV]
    if os.environ.get(AUTH_TOKEN_FILE_ENV):
        return read_token_file(os.environ[AUTH_TOKEN_FILE_ENV])
    try:
        path = stack_dir(registry_url) / TOKEN_FILE_NAME
    except AuthError:
        return None  # no usable runtime dir: no stack of ours to find
    return read_token_file(path) if path.exists() else None


def _check_private(path: Path, *, directory: bool) -> None:
    """Refuse a path that is a symlink, not ours, of the wrong type, or open to group/others."""
    info = path.lstat()
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    what = "directory" if directory else "file"
    if not kind_ok:
        raise AuthError(f"{path} should be a {what} (not a symlink); remove it or set {RUNTIME_DIR_ENV}")
    if info.st_uid != os.getuid():
        raise AuthError(f"{path} belongs to another user (uid {info.st_uid}); remove it or set {RUNTIME_DIR_ENV}")
    if info.st_mode & 0o077:
        mode = "700" if directory else "600"
        raise AuthError(f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); chmod {mode} {path}")
