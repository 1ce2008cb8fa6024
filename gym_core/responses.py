"""The JSON responses every server sends: orjson bodies, and one error envelope with bounded messages."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from gym_core.limits import truncate_echo
from gym_core.protocol import ErrorBody, ErrorDetail, dumps

ERROR_TYPES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 409: "conflict", 410: "gone", 413: "payload_too_large", 422: "invalid_request",
    429: "rate_limited", 431: "headers_too_large", 503: "unavailable",
}


class JSONResponse(Response):
    """A JSON response rendered with orjson; pydantic models dump only their set fields (rows pass intact)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialize the content with `protocol.dumps`."""
        return dumps(content)


def error_response(status: int, message: str, error_type: str | None = None) -> JSONResponse:
    """An `{"error": {"type", "message"}}` response; the message is cut to a bounded length (no whole echoes)."""
    kind = error_type or ERROR_TYPES.get(status, "http_error")
    return JSONResponse(ErrorBody(error=ErrorDetail(type=kind, message=truncate_echo(message))), status_code=status)
