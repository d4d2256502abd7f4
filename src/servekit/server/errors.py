"""The one table from servekit errors to HTTP statuses, and the handlers that use it.

Every error leaves as ``{"error": "<message>"}``; unknown exceptions become a 500
that names the exception type without a traceback. The server log gets that traceback
once, bounded (a RecursionError's is thousands of lines), and the exception is marked
logged so the app's entry (``edge.ServekitAPI``) does not hand it on to uvicorn, which
would log it again in full.

Answers of 500 and above for servekit's own errors (a full queue, a deadline, a model
not ready) are logged through ``RefusalLog``: under overload they come by the
thousand, so each model's first is logged in full and the rest are counted, one line
per model and status every ``interval_s``. The HTTP metrics count every one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import traceback
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from servekit.errors import (
    BadInput,
    ClientDisconnected,
    DeadlineExceeded,
    Forbidden,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServekitError,
    Unauthorized,
)
from servekit.server.encoding import json_response
from servekit.server.limits import BodyTooLarge

log = logging.getLogger(__name__)

# An unexpected exception's traceback in the log: its innermost frames, at most this
# many characters (the first and last halves).
TRACEBACK_FRAMES = 30
TRACEBACK_CHARS = 16_000
LOGGED = "servekit_logged"  # set on an exception once its traceback is in the log

HTTP_STATUS: dict[type[ServekitError], int] = {
    PayloadTooLarge: 413,
    BadInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
    ClientDisconnected: 499,  # nginx's "client closed request": nobody reads it
}


def status_for(exc: ServekitError) -> int:
    """The status of the closest class in the exception's MRO; unmapped → 500."""
    return next((HTTP_STATUS[k] for k in type(exc).__mro__ if k in HTTP_STATUS), 500)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status=status, headers=headers)


_MODEL_IN_PATH = re.compile(r"/v[12]/models/([^/:]+)")
MAX_WINDOWS = 256  # (model, status, error) kinds counted at once; past it, logged each
REASON_CHARS = 200


@dataclass(slots=True)
class _Window:
    loop: asyncio.AbstractEventLoop
    count: int = 0  # answers since the line that opened the window or the last summary
    last: str = ""


class RefusalLog:
    """Logs servekit's 5xx answers: the first of each (model, status, error kind) at
    once, in full; the ones after it within ``interval_s`` as one line with their count
    when the interval ends (on the event loop's timer, so the last burst of an
    overload is reported too). A quiet interval closes the window."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def record(self, method: str, path: str, status: int, exc: Exception) -> None:
        m = _MODEL_IN_PATH.search(path)
        key = (m.group(1) if m else path, status, type(exc).__name__)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        window = self._windows.get(key)
        if window is not None and window.loop is loop and not loop.is_closed():
            window.count += 1
            window.last = str(exc)
            return
        log.warning("%s %s -> %d: %s", method, path, status, exc)
        if loop is not None and (window is not None or len(self._windows) < MAX_WINDOWS):
            self._windows[key] = _Window(loop)
            loop.call_later(self.interval_s, self._flush, key)

    def _flush(self, key: tuple[str, int, str]) -> None:
        window = self._windows.get(key)
        if window is None:
            return
        if window.count == 0:
            del self._windows[key]
            return
        model, status, kind = key
        log.warning(
            "model %r: %d more requests answered %d in the last %g s (%s: %s)",
            model,
            window.count,
            status,
            self.interval_s,
            kind,
            window.last[:REASON_CHARS],
        )
        window.count = 0
        window.loop.call_later(self.interval_s, self._flush, key)


refusals = RefusalLog()


def response_for(exc: Exception, method: str, path: str) -> Response:
    """The answer to an exception from a request's handling, by the one table; an
    exception servekit did not expect is logged with its traceback and answered 500.
    (FastAPI's exception handlers below and servekit's inference router both use it.)"""
    if isinstance(exc, ServekitError):
        status = status_for(exc)
        headers = {}
        if isinstance(exc, Overloaded | NotReady):
            # None: only an operator can change it (a model that failed to load), and a
            # "retry in 1 s" would invite a retry storm.
            retry_after = getattr(exc, "retry_after_s", 1)
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, BodyTooLarge):
            headers["Connection"] = "close"  # the rest of the body was never read
        if status >= 500:
            refusals.record(method, path, status, exc)
        return error_response(status, str(exc) or type(exc).__name__, headers)
    if isinstance(exc, StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    log.error("unhandled error on %s %s\n%s", method, path, bounded_traceback(exc))
    with contextlib.suppress(AttributeError):  # some exceptions take no attributes
        setattr(exc, LOGGED, True)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def bounded_traceback(exc: BaseException) -> str:
    """The exception's traceback: its innermost frames, cut to a bounded size."""
    text = "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES)
    ).rstrip()
    if len(text) <= TRACEBACK_CHARS:
        return text
    half = TRACEBACK_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


async def _handled(request: Request, exc: Exception) -> Response:
    return response_for(exc, request.method, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return error_response(400, "; ".join(parts))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServekitError, _handled)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _handled)
    app.add_exception_handler(Exception, _handled)
