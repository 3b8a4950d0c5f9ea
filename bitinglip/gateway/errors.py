"""Errors as OpenAI's API shapes them: `{"error": {"message", "type", "param", "code"}}`.

Every refusal of the gateway is an `ApiError` with its HTTP status; the app turns it into that
body. Statuses: 400 bad input (unknown models included, and bodies over the size cap), 401 no
or wrong API key, 404 unknown path, 405 wrong method, 415 a POST body not declared JSON, 421 a
Host other than loopback with no keys configured, 429 the interactive queue is full (with
Retry-After), 503 the fleet cannot run the request, 502 the task ended without an answer.
"""

from __future__ import annotations

from typing import Any

# status -> OpenAI's `type` for it
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    415: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    502: "server_error",
    503: "server_error",
    500: "server_error",
}


class ApiError(Exception):
    """A request refused or failed, with the status and the error object to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
