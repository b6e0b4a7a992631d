"""Clients for the other parties' Peer service (mutual TLS with this party's certificate)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.spec import Holding
from mpcagg.servers.aggregator import Manifest
from mpcagg.v1 import peer_pb2, peer_pb2_grpc
from mpcagg.wire.convert import holdings_from_proto, holdings_to_proto, state_from_proto
from mpcagg.wire.status import translate


@dataclass(frozen=True, slots=True)
class PeerTls:
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
                self._stub = peer_pb2_grpc.PeerStub(self._channel)
                self._target = target
            return self._stub

    def _call(self, name: str, request: object) -> object:
        try:
            return getattr(self._get_stub(), name)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise translate(exc, self.party, name) from None

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        reply = self._call(
            "Manifest", peer_pb2.ManifestRequest(round_id=round_id, spec_digest=spec_digest)
        )
        assert isinstance(reply, peer_pb2.ManifestReply)
        return Manifest(
            round_id=reply.round_id,
            party=reply.party,
            held=holdings_from_proto(reply.held),
            state=state_from_proto(reply.state),
            cohort_digest=reply.cohort_digest,
        )

    def commit(
        self, round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec_digest: bytes
    ) -> None:
        self._call(
            "Commit",
            peer_pb2.CommitRequest(
                round_id=round_id,
                cohort=holdings_to_proto(cohort),
                cohort_digest=digest,
                spec_digest=spec_digest,
            ),
        )

    def fail(self, round_id: str, reason: str) -> None:
        self._call("Fail", peer_pb2.FailRequest(round_id=round_id, reason=reason))

    def close(self) -> None:
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
