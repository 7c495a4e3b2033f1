"""Errors with TF Serving's status codes, and how each transport reports them.

Every failure inside the server is a `ServingError` carrying a canonical status code (the numbers of
`google.rpc.Code` / `absl::StatusCode`, which gRPC uses as is). The gRPC layer aborts with that code; the
REST layer maps it to the HTTP status TF Serving's `http_server.cc` uses and returns `{"error": message}`.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes (same numbers as grpc.StatusCode and absl::StatusCode)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: HTTP status for each code, as TF Serving's REST server maps them (ToHTTPStatusCode).
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

#: TF Serving truncates gRPC error messages to this many characters (grpc_status_util.cc).
MAX_GRPC_MESSAGE = 1024


class ServingError(Exception):
    """A request or load failure with a canonical status code and a message for the client."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def grpc_message(self) -> str:
        if len(self.message) > MAX_GRPC_MESSAGE:
            return self.message[:MAX_GRPC_MESSAGE] + "...TRUNCATED"
        return self.message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)
