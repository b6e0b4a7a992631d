"""The one table mapping service errors to gRPC status codes, and back.

The server's interceptor (:mod:`mpcagg.servers.interceptor`) aborts every refused call
with :func:`abort`; clients and the leader's peer calls translate a received status
back with :func:`translate`. Unexpected exceptions become
INTERNAL with a generic message (details go to the log, never to the caller).
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from mpcagg.mpc.errors import MpcError
from mpcagg.protocol import errors

log = logging.getLogger("mpcagg.status")

CODES: dict[grpc.StatusCode, type[errors.ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.RoundNotOpen,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.LimitExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.ABORTED: errors.Unavailable,
}
"""The one table: a received status → its error (any other: :class:`ServerError`); an
error raised by a handler → the status named by its class's ``code``."""


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status a handler's exception is sent as (INTERNAL for an unexpected one)."""
    if isinstance(exc, errors.ServiceError) and not isinstance(exc, errors.ServerError):
        return grpc.StatusCode[exc.code]
    if isinstance(exc, MpcError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with ``exc`` as its status (:func:`code_for`) and its message cut by
    :func:`bounded`; an unexpected exception is logged and sent as INTERNAL with a
    generic message; :class:`errors.Busy` adds the :data:`RETRYABLE` trailer. Never
    returns: ``context.abort`` raises."""
    code = code_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error in handler", exc_info=exc)
        context.abort(code, "internal server error")
    if isinstance(exc, errors.Busy):
        context.set_trailing_metadata(((RETRYABLE, "1"),))
    context.abort(code, bounded(str(exc)))
    raise AssertionError("unreachable")  # context.abort raises


RETRYABLE = "mpcagg-retryable"
"""Trailing metadata on RESOURCE_EXHAUSTED when the limit frees up by itself."""

MAX_DETAIL_CHARS = 1000
"""Status details travel as a trailer (clients refuse metadata beyond ~8 KiB). Messages
quote caller input (round ids, client ids), so they are cut here rather than grow with it."""


def bounded(detail: str) -> str:
    """``detail``, shortened to :data:`MAX_DETAIL_CHARS` characters."""
    if len(detail) <= MAX_DETAIL_CHARS:
        return detail
    return detail[: MAX_DETAIL_CHARS - 1] + "…"


def is_abort(exc: BaseException) -> bool:
    """Whether ``exc`` is gRPC's own signal that ``context.abort`` was called."""
    # grpc's context.abort raises a bare Exception subclass private to grpc.
    return type(exc).__module__.startswith("grpc") and not isinstance(exc, grpc.RpcError)


def translate(exc: grpc.RpcError, party: int, method: str) -> errors.ServiceError:
    """The error for a failed call to ``party`` (the one translation point, used by
    clients and by the leader's peer calls alike)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    cls = CODES.get(code, errors.ServerError)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _retryable(exc):
        cls = errors.Busy
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return cls(details or "", party=party, method=method, code=name)


def _retryable(exc: grpc.RpcError) -> bool:
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else ()
    return any(key == RETRYABLE and value == "1" for key, value in trailing or ())
