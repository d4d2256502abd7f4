"""servekit's errors as gRPC status codes: the one table for gRPC, beside HTTP's
(``servekit.server.errors``)."""

from __future__ import annotations

import grpc

from servekit.errors import (
    BadInput,
    ClientDisconnected,
    DeadlineExceeded,
    Forbidden,
    NotFound,
    NotReady,
    Overloaded,
    ServekitError,
    Unauthorized,
)

GRPC_STATUS: dict[type[ServekitError], grpc.StatusCode] = {
    BadInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    ClientDisconnected: grpc.StatusCode.CANCELLED,
}


def status_for(exc: ServekitError) -> grpc.StatusCode:
    """The status of the closest class in the exception's MRO; unmapped → INTERNAL."""
    return next(
        (GRPC_STATUS[k] for k in type(exc).__mro__ if k in GRPC_STATUS),
        grpc.StatusCode.INTERNAL,
    )
