"""Shared helpers for the security suite: a TLS cluster of real server processes and
raw gRPC channels that present exactly the client certificate a test asks for (every
port of a TLS cluster requires one: mutual TLS).

Every test module starts at most one cluster (module scope) so the suite stays
within its time budget on two cores; every RPC carries a deadline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpcagg.mpc.digest import payload_digest
from mpcagg.ops.credentials import KeyPair, issue_client_cert, issue_party_cert, load_key_pair
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.identity import Role
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from mpcagg.v1 import peer_pb2, peer_pb2_grpc

RPC_S = 5.0
"""Deadline of every raw call the suite makes."""


@dataclass
class SecureEnv:
    """A running TLS cluster plus the CA that signed its certificates."""

    cluster: LocalCluster
    ca: KeyPair
    _channels: dict[tuple[Any, ...], grpc.Channel] = field(default_factory=dict)
    _clients: dict[tuple[str, str], KeyPair] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.cluster.n_parties

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def party_pair(self, party: int) -> KeyPair:
        certs = self.cluster.directory / "certs"
        return load_key_pair(certs / f"party-{party}.pem", certs / f"party-{party}-key.pem")

    def client_pair(self, client_id: str, role: Role = "trainer") -> KeyPair:
        """A client certificate issued by the cluster's own CA (the same one each time)."""
        pair = self._clients.get((client_id, role))
        if pair is None:
            pair = self._clients[client_id, role] = issue_client_cert(self.ca, client_id, role)
        return pair

    def collector_pair(self) -> KeyPair:
        return self.client_pair("collector", "collector")

    def stray_party_pair(self, party: int) -> KeyPair:
        """A party certificate from the cluster CA for a party index outside the cluster."""
        return issue_party_cert(self.ca, party, ["127.0.0.1", "localhost"])

    def address(self, party: int, *, peer: bool = False) -> str:
        p = self.cluster.config.party(party)
        return p.peer_address if peer else p.address

    def channel(
        self,
        party: int,
        *,
        peer: bool = False,
        client: KeyPair | None = None,
        root: bytes | None = None,
        plaintext: bool = False,
    ) -> grpc.Channel:
        """A cached channel to ``party``'s client port (or peer port) with the given TLS."""
        key = (party, peer, client.cert_pem if client else None, root, plaintext)
        channel = self._channels.get(key)
        if channel is None:
            target = self.address(party, peer=peer)
            if plaintext:
                channel = grpc.insecure_channel(target)
            else:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=root or self.ca_pem,
                    private_key=client.key_pem if client else None,
                    certificate_chain=client.cert_pem if client else None,
                )
                channel = grpc.secure_channel(target, creds)
            self._channels[key] = channel
        return channel

    def agg(self, party: int, **kw: Any) -> pb_grpc.AggregationStub:
        return pb_grpc.AggregationStub(self.channel(party, **kw))  # type: ignore[no-untyped-call]

    def as_trainer(self, party: int, client_id: str) -> pb_grpc.AggregationStub:
        """``party``'s Aggregation service over mutual TLS as trainer ``client_id``."""
        return self.agg(party, client=self.client_pair(client_id))

    def as_collector(self, party: int) -> pb_grpc.AggregationStub:
        """``party``'s Aggregation service over mutual TLS as the collector."""
        return self.agg(party, client=self.collector_pair())

    def peer(self, party: int, **kw: Any) -> peer_pb2_grpc.PeerStub:
        return peer_pb2_grpc.PeerStub(self.channel(party, **kw))  # type: ignore[no-untyped-call]

    def health(self, party: int, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel(party, client=self.collector_pair()))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_S)
        return int(reply.status)

    def assert_all_serving(self) -> None:
        for i in range(self.n):
            assert self.cluster.alive(i), f"party {i} died:\n{self.cluster.log_text(i)[-3000:]}"
            for service in ("", "mpcagg.v1.Aggregation", "mpcagg.v1.Peer"):
                assert self.health(i, service) == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


LENGTH = 4
"""Ring elements of the rounds the authorisation tests open."""


def start_env(directory: Path, **kwargs: Any) -> Iterator[SecureEnv]:
    """Run a TLS cluster under ``directory`` for the duration of the generator."""
    cluster = LocalCluster(directory, **kwargs)
    try:
        cluster.start(timeout=60.0)
        certs = directory / "certs"
        env = SecureEnv(cluster, load_key_pair(certs / "ca.pem", certs / "ca-key.pem"))
        yield env
        env.close()
    finally:
        cluster.stop(timeout=20.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    """A default 3-party TLS cluster for one test module."""
    yield from start_env(tmp_path_factory.mktemp("secure"))


# --- messages -----------------------------------------------------------------------------


def spec_msg(
    round_id: str,
    length: int = 4,
    *,
    n_parties: int = 3,
    min_clients: int = 2,
    max_clients: int = 10,
    trainers_may_fetch: bool = False,
) -> pb.RoundSpec:
    return pb.RoundSpec(
        round_id=round_id,
        tensors=[pb.TensorSpec(name="w", shape=[length])],
        precision_bits=16,
        bound=1000.0,
        min_clients=min_clients,
        max_clients=max_clients,
        n_parties=n_parties,
        trainers_may_fetch=trainers_may_fetch,
    )


def create_round(env: SecureEnv, spec: pb.RoundSpec) -> None:
    for i in range(env.n):
        env.as_collector(i).CreateRound(pb.CreateRoundRequest(spec=spec), timeout=RPC_S)


def sharing_of(client_id: str) -> bytes:
    """The sharing id the upload helpers use for ``client_id`` at every party."""
    return hashlib.sha256(b"sharing" + client_id.encode()).digest()[:16]


def seed_upload(
    round_id: str,
    client_id: str,
    party: int,
    length: int,
    seed: bytes = b"\x07" * 32,
    sharing_id: bytes | None = None,
) -> list[pb.UploadMessage]:
    """A well-formed seed upload (its digest matches)."""
    header = pb.UploadHeader(
        round_id=round_id,
        client_id=client_id,
        sharing_id=sharing_of(client_id) if sharing_id is None else sharing_id,
        party=party,
        kind=pb.SEED,
        length=length,
        payload_digest=payload_digest(seed),
        seed=seed,
    )
    return [pb.UploadMessage(header=header)]


def full_upload(
    round_id: str,
    client_id: str,
    party: int,
    data: bytes,
    sharing_id: bytes | None = None,
    chunk: int = 16,
) -> list[pb.UploadMessage]:
    """A well-formed full-share upload of ``data`` (little-endian uint64s) in chunks."""
    header = pb.UploadHeader(
        round_id=round_id,
        client_id=client_id,
        sharing_id=sharing_of(client_id) if sharing_id is None else sharing_id,
        party=party,
        kind=pb.FULL,
        length=len(data) // 8,
        payload_digest=payload_digest(data),
    )
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return [pb.UploadMessage(header=header)] + [pb.UploadMessage(chunk=c) for c in chunks]


def upload_seed(
    env: SecureEnv, round_id: str, client_id: str, party: int, length: int
) -> pb.UploadReceipt:
    """A seed upload of ``client_id`` to ``party``, with its own certificate."""
    seed = client_id.encode().ljust(32, b".")[:32]
    msgs = seed_upload(round_id, client_id, party, length, seed=seed)
    reply: pb.UploadReceipt = env.as_trainer(party, client_id).Upload(iter(msgs), timeout=RPC_S)
    return reply


def open_round(
    env: SecureEnv, round_id: str, clients: list[str], length: int, **kw: object
) -> pb.RoundSpec:
    """Create the round at every party and upload a seed of each client to each party."""
    spec = spec_msg(round_id, length, **kw)  # type: ignore[arg-type]
    create_round(env, spec)
    for cid in clients:
        for party in range(env.n):
            upload_seed(env, round_id, cid, party, length)
    return spec


def close_round(env: SecureEnv, round_id: str) -> pb.RoundStatus:
    """Close the round at the leader (the collector's CloseRound)."""
    reply: pb.RoundStatus = env.as_collector(0).CloseRound(
        pb.CloseRoundRequest(round_id=round_id), timeout=15
    )
    return reply


@pytest.fixture(scope="module")
def committed(env: SecureEnv) -> pb.RoundSpec:
    """A committed round of ``LENGTH`` elements (trainers may not fetch) with cohort t1,
    t2, t3, on the module's ``env``."""
    spec = open_round(env, "committed", ["t1", "t2", "t3"], LENGTH)
    assert close_round(env, "committed").state == pb.COMMITTED
    return spec


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code ``call`` fails with (OK if it succeeds)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def error_of(call: Callable[[], object]) -> grpc.RpcError:
    """The error ``call`` fails with; the test fails if it succeeds."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")


def manifest_req(round_id: str = "no-such-round") -> peer_pb2.ManifestRequest:
    return peer_pb2.ManifestRequest(round_id=round_id, spec_digest=b"\x00" * 32)


def assert_handshake_refused(call: Callable[[], object]) -> grpc.RpcError:
    """``call`` fails because the server refused the TLS handshake, before any request
    was read: UNAVAILABLE with the connection closed by the server ("Socket closed"),
    not refused (the server is up) and not a status from a servicer."""
    err = error_of(call)
    details = err.details() or ""
    assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), details)
    assert "Socket closed" in details, details
    return err
