"""Errors as TF Serving reports them: a gRPC status code, a message, and the REST HTTP code.

Every failure a request can meet is raised as `ServingError` with the code TF Serving gives for
it (`tensorflow_serving/model_servers/grpc_status_util.cc`, `http_server.cc`); the gRPC and REST
front ends turn it into their own status. Nothing else escapes a request handler.
"""

from __future__ import annotations

import re

import grpc

# TF Serving cuts longer messages and marks them (grpc_status_util.cc, kErrorMessageLimit).
MAX_MESSAGE_CHARS = 1024
TRUNCATED_SUFFIX = "...TRUNCATED"

_GRAPH_ERROR = "Graph execution error:"
_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

# http_server.cc, ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request failure with the gRPC status code a TF Serving client would see."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def wire_message(self) -> str:
        """The message as sent to the client: at most 1024 characters, then `...TRUNCATED`."""
        if len(self.message) > MAX_MESSAGE_CHARS:
            return self.message[:MAX_MESSAGE_CHARS] + TRUNCATED_SUFFIX
        return self.message

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def code_from_value(value: int) -> grpc.StatusCode:
    """The gRPC status code with this number (TF's error codes use the same numbers)."""
    return _CODE_BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


def clean_tf_message(message: str) -> str:
    """The op's own message, as the C++ session reports it to TF Serving: without eager
    Python's "Graph execution error: Detected at node ..." header and "[Op:...]" suffix."""
    text = message
    if text.startswith(_GRAPH_ERROR):
        lines = text[len(_GRAPH_ERROR):].lstrip("\n").split("\n")
        if lines and lines[0].startswith("Detected at node"):
            lines.pop(0)
            while lines and lines[0].startswith(("  ", "<stack traces unavailable>", "Node: ")):
                lines.pop(0)
        text = "\n".join(lines)
    text = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text).strip()
    return text or message


def from_tf_error(error: Exception) -> ServingError:
    """A TensorFlow `OpError` (which carries `error_code`) as the same-coded ServingError."""
    return ServingError(code_from_value(getattr(error, "error_code", 2)),
                        clean_tf_message(getattr(error, "message", str(error))))


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)
