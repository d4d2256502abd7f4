"""Exceptions raised by servekit's core.

The core never knows about HTTP: the status code for each exception lives in one
table at the edge (``servekit.server.errors``). The tree:

    ServekitError
    ├── BadInput            the request is wrong (shape, dtype, names, limits)
    │   ├── PayloadTooLarge the body is over the configured size limit
    │   └── InputFailed     the model failed on this request's input while it still
    │                       runs others (its batch-mates were answered)
    ├── NotFound            unknown model or version
    ├── NotReady            the model exists but cannot serve now
    ├── Overloaded          the queue is full; try again later
    ├── DeadlineExceeded    the request's deadline passed before compute
    ├── Unauthorized        missing or wrong credentials
    ├── Forbidden           the operation is disabled
    ├── ClientDisconnected  the client left before its result was ready
    └── InferenceFailed     the model raised while running a batch
"""

from __future__ import annotations


class ServekitError(Exception):
    """Base class of every error servekit raises on purpose."""


class BadInput(ServekitError):
    """The request cannot be served as sent; the message says what to fix."""


class PayloadTooLarge(BadInput):
    """The request body is larger than the configured limit."""


class InputFailed(BadInput):
    """The model raised on this request's input, alone, while its instance stays healthy
    (it still runs its warm-up rows): the input is to blame, not the server."""


class NotFound(ServekitError):
    """No such model or version."""


class NotReady(ServekitError):
    """The model is known but not ready to serve (loading, unloading, failed)."""


class Overloaded(ServekitError):
    """Refused up front because the model's queue is full."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServekitError):
    """The request's deadline passed while it waited in the queue."""


class Unauthorized(ServekitError):
    """Missing or invalid credentials."""


class Forbidden(ServekitError):
    """The operation is not allowed (for example, the management API is disabled)."""


class InferenceFailed(ServekitError):
    """The interpreter raised while running a batch."""


class ClientDisconnected(ServekitError):
    """The client went away before its result was ready; the request was dropped."""


class ShuttingDown(NotReady):
    """The server is draining and accepts no new work."""
