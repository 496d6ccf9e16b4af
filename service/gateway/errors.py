"""HTTP error responses in the contract's shape: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from service.codec import http_error
from service.model import ErrorCode, ServiceError

RETRY_AFTER_S = "1"


class HTTPFailure(Exception):
    """Raised inside a route to answer with a contract-shaped error."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: ErrorCode, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The contract's error body; `Retry-After` on 429 and 503, and any `headers` given
    (a 405's `Allow`)."""
    extra = dict(headers or {})
    if status in (429, 503):
        extra["Retry-After"] = RETRY_AFTER_S
    return Response(http_error(code, message), status, extra or None, media_type="application/json")


def service_error_response(error: ServiceError) -> Response:
    return error_response(error.http_status, error.code, error.message)
