"""The parties the leader coordinates, behind one interface: :class:`Peer`.

:class:`LocalPeer` is the leader's own aggregator; :class:`PeerClient` is another
party's Peer service (mutual TLS with this party's certificate). The leader calls
both alike, by method.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.spec import Holding
from mpcagg.protocol.state import Manifest
from mpcagg.servers.versioning import versioned
from mpcagg.v1 import peer_pb2_grpc
from mpcagg.wire import convert
from mpcagg.wire.status import translate

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator


class Peer(Protocol):
    """A party as the leader sees it. Every method raises the party's
    :class:`mpcagg.protocol.errors.ServiceError` (Unavailable when unreachable)."""

    party: int

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        """Stop accepting uploads for the round and report what is held."""
        ...

    def commit(
        self, round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec_digest: bytes
    ) -> None:
        """Fix the cohort and compute the aggregate share over exactly it."""
        ...

    def fail(self, round_id: str, reason: str) -> None:
        """Mark the round FAILED and drop its shares."""
        ...


class LocalPeer:
    """The leader's own party."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._agg = aggregator
        self.party = aggregator.party

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        """:meth:`Aggregator.manifest` on this party (no network)."""
        return self._agg.manifest(round_id, spec_digest)

    def commit(
        self, round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec_digest: bytes
    ) -> None:
        """:meth:`Aggregator.commit` on this party (no network); raises what it raises."""
        self._agg.commit(round_id, cohort, digest, spec_digest)

    def fail(self, round_id: str, reason: str) -> None:
        """:meth:`Aggregator.fail` on this party (no network); raises what it raises."""
        self._agg.fail(round_id, reason)


@dataclass(frozen=True, slots=True)
class PeerTls:
    """The cluster CA and this party's certificate and key (PEM) for its peer links;
    prints as ``PeerTls(..)``.
    """

    ca: bytes
    cert: bytes
    key: bytes

    def __repr__(self) -> str:
        return "PeerTls(..)"


class PeerClient:
    """One other party."""

    def __init__(
        self,
        party: int,
        address: Callable[[], str],
        tls: PeerTls | None,
        timeout: float,
        max_message: int,
    ) -> None:
        self.party = party
        self._address = address
        self._tls = tls
        self._timeout = timeout
        self._options = [
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_receive_message_length", max_message),
            # A party that restarts is dialled again within seconds (gRPC's default
            # back-off grows to two minutes, longer than a group reveal waits).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: peer_pb2_grpc.PeerStub | None = None
        self._target = ""

    def _get_stub(self) -> peer_pb2_grpc.PeerStub:
        target = self._address()
        with self._lock:
            if self._stub is None or target != self._target:
                if self._channel is not None:
                    self._channel.close()
                if self._tls is None:
                    self._channel = grpc.insecure_channel(target, options=self._options)
                else:
                    creds = grpc.ssl_channel_credentials(
                        root_certificates=self._tls.ca,
                        private_key=self._tls.key,
                        certificate_chain=self._tls.cert,
                    )
                    self._channel = grpc.secure_channel(target, creds, options=self._options)
                self._stub = peer_pb2_grpc.PeerStub(versioned(self._channel, self.party))
                self._target = target
            return self._stub

    def channel(self) -> grpc.Channel:
        """The mutual-TLS channel to this party's peer port, dialled with this party's
        certificate (the parties' group sends its messages over it too)."""
        self._get_stub()
        with self._lock:
            assert self._channel is not None
            return self._channel

    def _call(self, method: str, call: Callable[[Any], Any]) -> Any:
        try:
            return call(self._get_stub())
        except grpc.RpcError as exc:
            raise translate(exc, self.party, method) from None

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        """Ask the peer for its manifest; a gRPC error is raised as the
        :class:`ServiceError` its status code maps to.
        """
        request = convert.manifest_request(round_id, spec_digest)
        reply = self._call("Manifest", lambda s: s.Manifest(request, timeout=self._timeout))
        return convert.manifest_from_proto(reply)

    def commit(
        self, round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec_digest: bytes
    ) -> None:
        """Commit ``cohort`` at the peer; a gRPC error is raised as its :class:`ServiceError`."""
        request = convert.commit_request(round_id, cohort, digest, spec_digest)
        self._call("Commit", lambda s: s.Commit(request, timeout=self._timeout))

    def fail(self, round_id: str, reason: str) -> None:
        """Fail the round at the peer; a gRPC error is raised as its :class:`ServiceError`."""
        request = convert.fail_request(round_id, reason)
        self._call("Fail", lambda s: s.Fail(request, timeout=self._timeout))

    def close(self) -> None:
        """Close the channel, if open; a later call opens a new one."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
                self._stub = None


def peer_clients(cluster: ClusterConfig, me: int, tls: PeerTls | None) -> list[PeerClient]:
    """Clients for every party but ``me``; port-0 addresses are re-read from the cluster file."""

    def resolver(party: int) -> Callable[[], str]:
        return lambda: cluster.address_of(party, peer=True)

    return [
        PeerClient(
            p.id,
            resolver(p.id),
            tls,
            cluster.limits.rpc_timeout_s,
            cluster.limits.max_message_bytes,
        )
        for p in cluster.ordered_parties()
        if p.id != me
    ]
