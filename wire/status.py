"""The one table mapping service errors to gRPC status codes, and back.

Servicers wrap every handler with :func:`grpc_errors`; peer clients translate a
peer's status back with :func:`error_from_code`. Unexpected exceptions become
INTERNAL with a generic message (details go to the log, never to the caller).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from mpcagg.mpc.errors import MpcError
from mpcagg.protocol import errors

log = logging.getLogger("mpcagg.status")

CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.RoundNotOpen: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

_BACK: dict[grpc.StatusCode, type[errors.ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.RoundNotOpen,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.LimitExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


def code_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    if isinstance(exc, MpcError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
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


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Translate domain errors raised by a unary or client-streaming handler."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except grpc.RpcError as exc:
            # Raised by a request stream the client cancelled or broke off: not a
            # server fault. The handler has already cleaned up (e.g. aborted the upload).
            log.info("%s: the client went away mid-call (%s)", method.__name__, _short(exc))
            context.abort(grpc.StatusCode.CANCELLED, "the request stream ended abnormally")
        except Exception as exc:
            if _is_abort(exc):
                raise
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def _short(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else type(exc).__name__


def grpc_stream_errors(method: F) -> F:
    """Translate domain errors raised by a server-streaming handler (a generator)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def _is_abort(exc: BaseException) -> bool:
    # grpc's context.abort raises a bare Exception subclass private to grpc.
    return type(exc).__module__.startswith("grpc") and not isinstance(exc, grpc.RpcError)


def error_from_code(code: grpc.StatusCode | None, detail: str, party: int) -> errors.ServiceError:
    """The domain error for a peer's status (transport failures become Unavailable)."""
    cls = _BACK.get(code) if code is not None else None
    if cls is None:
        return errors.Unavailable(f"party {party} unreachable or failing ({_name(code)}): {detail}")
    return cls(f"party {party}: {detail}")


def _name(code: grpc.StatusCode | None) -> str:
    return "no status" if code is None else code.name
