"""One gRPC server interceptor for every mpcagg RPC: who may call it, how its errors
become status codes, and one log line per refused call.

Each method's policy is one row of :data:`POLICY`; the caller is authenticated
before the handler reads anything it sent, and handlers read the identity with
:func:`caller`. Every exception a handler raises is mapped by
:func:`mpcagg.wire.status.abort` (the one code table), and every refusal is logged
once with its code, method, round and caller (never a payload: messages carry ids
and sizes only). Health checks are not intercepted.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc

from mpcagg.protocol.errors import ServiceError
from mpcagg.protocol.identity import Identity, Role
from mpcagg.servers.auth import Authenticator, PeerAuthenticator
from mpcagg.wire.status import abort, code_for, is_abort

log = logging.getLogger("mpcagg.refused")

Policy = tuple[Role, ...] | Literal["leader", "party"]

POLICY: dict[str, Policy] = {
    "/mpcagg.v1.Aggregation/CreateRound": ("collector",),
    "/mpcagg.v1.Aggregation/GetRound": ("trainer", "collector"),
    "/mpcagg.v1.Aggregation/Upload": ("trainer",),
    "/mpcagg.v1.Aggregation/UploadWhole": ("trainer",),
    "/mpcagg.v1.Aggregation/CloseRound": ("collector",),
    "/mpcagg.v1.Aggregation/GetAggregateShare": ("collector", "trainer"),
    "/mpcagg.v1.Peer/Manifest": "leader",
    "/mpcagg.v1.Peer/Commit": "leader",
    "/mpcagg.v1.Peer/Fail": "leader",
    # Operator commands (`mpcagg rounds`, servers/admin.py): the collector only.
    "/mpcagg.v1.Admin/ListRounds": ("collector",),
    "/mpcagg.v1.Admin/ShowRound": ("collector",),
    "/mpcagg.v1.Admin/AbortRound": ("collector",),
    "/mpcagg.v1.Admin/PruneRounds": ("collector",),
    "/mpcagg.v1.Admin/GetAuditLog": ("collector",),
    # Reveal mode "servers" (servers/reveal.py): any party sends group frames to any
    # other (peer port; the frame must name the sender its certificate names); the
    # reveal's state for the collector and trainers, the sum for cohort trainers only.
    "/mpcagg.v1.Group/Send": "party",
    "/mpcagg.v1.Reveal/GetRevealStatus": ("collector", "trainer"),
    "/mpcagg.v1.Reveal/GetRevealedSum": ("trainer",),
}
"""Who may call each RPC: client roles (client port), the leader's party certificate, or
any party certificate of the cluster (peer port). A method missing here is not served
by the interceptor's servers."""

_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("caller", default=None)

Refusal = Callable[[str, str, str, str], None]
"""``(code, method, round_id, caller)`` of a refused call, e.g. for a metric."""


def caller() -> Identity | None:
    """The authenticated trainer or collector of the call being handled (None for peer
    calls and in ``--insecure`` mode)."""
    return _CALLER.get()


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Authenticates per :data:`POLICY`, maps errors, logs refusals."""

    def __init__(
        self,
        auth: Authenticator,
        peer_auth: PeerAuthenticator,
        on_refusal: Refusal | None = None,
    ) -> None:
        self._auth = auth
        self._peer_auth = peer_auth
        self._on_refusal = on_refusal

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        """Wrap the handler of every method in :data:`POLICY`: authenticate the caller by
        the method's policy, map a :class:`ServiceError` to its status code (the one table,
        :mod:`wire.status`) and log one line per refusal. Methods without a policy pass
        through unchanged (grpc ``ServerInterceptor``).
        """
        handler = continuation(details)
        method: str = details.method
        policy = POLICY.get(method)
        if handler is None or policy is None:
            return handler
        name = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, name, policy),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, name, policy),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, name, policy),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise AssertionError(f"{method}: no mpcagg RPC streams both ways")  # pragma: no cover

    def _admit(self, context: grpc.ServicerContext, policy: Policy) -> Identity | None:
        if policy == "leader":
            self._peer_auth.require_leader(context)
            return None
        if policy == "party":
            self._peer_auth.require_party(context)
            return None
        return self._auth.require(context, *policy)

    def _unary(self, behaviour: Any, name: str, policy: Policy) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            token = None
            try:
                token = _CALLER.set(self._admit(context, policy))
                return behaviour(request, context)
            except grpc.RpcError as exc:
                # A request stream the client cancelled or broke off: not a server fault;
                # the handler has cleaned up (e.g. aborted the upload).
                log.info("%s: the client went away mid-call (%s)", name, _code_name(exc))
                context.abort(grpc.StatusCode.CANCELLED, "the request stream ended abnormally")
            except Exception as exc:
                if is_abort(exc):
                    raise
                self._refuse(context, name, request, exc)
            finally:
                if token is not None:
                    _CALLER.reset(token)

        return handle

    def _streaming(self, behaviour: Any, name: str, policy: Policy) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = None
            try:
                token = _CALLER.set(self._admit(context, policy))
                yield from behaviour(request, context)
            except Exception as exc:
                if is_abort(exc):
                    raise
                self._refuse(context, name, request, exc)
            finally:
                if token is not None:
                    # A stream cancelled by the client is closed from another thread,
                    # whose context never held the token: nothing to reset there.
                    with contextlib.suppress(ValueError):
                        _CALLER.reset(token)

        return handle

    def _refuse(
        self, context: grpc.ServicerContext, method: str, request: Any, exc: Exception
    ) -> None:
        code = code_for(exc)
        if isinstance(exc, ServiceError):
            ident = _CALLER.get()
            who = f"{ident.role} {ident.client_id}" if ident is not None else "-"
            round_id = getattr(request, "round_id", "") if not isinstance(request, Iterator) else ""
            log.info(
                "refused %s %s round=%s caller=%s: %s",
                method,
                code.name,
                round_id or "-",
                who,
                exc,
            )
            if self._on_refusal is not None:
                self._on_refusal(code.name, method, round_id, who)
        abort(context, exc)


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else type(exc).__name__
