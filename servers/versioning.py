"""The peer protocol version on the wire (:mod:`mpcagg.protocol.version`).

- :class:`VersionInterceptor` (both of a party's servers): a peer call (``mpcagg.v1.Peer``)
  whose ``mpcagg-protocol`` metadata names a version this party does not speak is refused
  with FAILED_PRECONDITION and a message naming both versions; peer replies and health
  replies carry this party's versions in their initial metadata (``mpcagg health``
  shows them).
- :func:`versioned`: the leader's channel to a peer sends its protocol version with every
  call and refuses a reply from a peer that announces an incompatible one.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from mpcagg.protocol.errors import ServerError
from mpcagg.protocol.version import PROTOCOL_HEADER, incompatibility, version_metadata

log = logging.getLogger("mpcagg.versions")

PEER_PREFIX = "/mpcagg.v1.Peer/"
ANNOUNCED = frozenset({"/grpc.health.v1.Health/Check"})


def _header(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return str(v)
    return None


class VersionInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks the caller's protocol on peer calls; announces this party's versions."""

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        """Refuse a peer call whose announced protocol version this party cannot serve (a
        line in the log, FAILED_PRECONDITION saying why); other calls pass
        through (grpc ``ServerInterceptor``).
        """
        method: str = details.method
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        if method.startswith(PEER_PREFIX):
            announced = _header(details.invocation_metadata, PROTOCOL_HEADER)
            problem = incompatibility(announced, "the calling party")
            if problem is not None:
                log.warning("refused %s: %s", method.rsplit("/", 1)[-1], problem)
                return _refusing(handler, problem)
        elif method not in ANNOUNCED:
            return handler
        behaviour = handler.unary_unary

        def announce(request: Any, context: grpc.ServicerContext) -> Any:
            context.send_initial_metadata(version_metadata())
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            announce,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _refusing(handler: Any, problem: str) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.send_initial_metadata(version_metadata())
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)

    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _Client(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, party: int) -> None:
        self._party = party

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), *version_metadata()]
        call = continuation(_Details(details, metadata), request)
        try:
            announced = _header(call.initial_metadata(), PROTOCOL_HEADER)
        except grpc.RpcError:
            return call
        if announced is not None:
            problem = incompatibility(announced, f"party {self._party}")
            if problem is not None:
                method = str(details.method).rsplit("/", 1)[-1]
                raise ServerError(
                    problem, party=self._party, method=method, code="FAILED_PRECONDITION"
                )
        return call


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def versioned(channel: grpc.Channel, party: int) -> grpc.Channel:
    """``channel`` (to party ``party``'s peer port), speaking and checking versions."""
    return grpc.intercept_channel(channel, _Client(party))
