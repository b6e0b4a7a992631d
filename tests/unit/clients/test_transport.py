"""Transport: error translation, retries, credentials, channel construction."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from mpcagg import ClientCredentials, Collector, SecureAggregator
from mpcagg.clients import transport as tr
from mpcagg.ops.credentials import (
    Identity,
    KeyPair,
    client_from_auth_context,
    create_ca,
    issue_client_cert,
    issue_party_cert,
    write_key_pair,
)
from mpcagg.protocol.cluster import ClusterConfig, Limits, TlsConfig
from mpcagg.protocol.errors import (
    AlreadyExists,
    Busy,
    ConfigError,
    InputError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    RoundNotOpen,
    RoundStateError,
    ServerError,
    Unavailable,
)
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from mpcagg.wire.status import translate
from tests.unit.clients import make_cluster, party_toml


class FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def cluster(n: int = 3, **kw: Any) -> ClusterConfig:
    return make_cluster([f"127.0.0.1:{50051 + i}" for i in range(n)], **kw)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, RoundNotOpen),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.ABORTED, Unavailable),
        (grpc.StatusCode.INTERNAL, ServerError),
    ],
)
def test_translate(code: grpc.StatusCode, cls: type) -> None:
    err = translate(FakeRpcError(code, "vector length 1000 does not match (4096)"), 2, "Upload")
    assert type(err) is cls
    assert (err.party, err.method, err.code) == (2, "Upload", code.name)
    assert err.server_message == "vector length 1000 does not match (4096)"
    assert (
        str(err)
        == f"party 2 refused Upload ({code.name}): vector length 1000 does not match (4096)"
    )
    assert err.transient == (cls is Unavailable)


def test_resource_exhausted_is_retried_only_when_the_server_says_it_frees_up() -> None:
    full = translate(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_clients"), 0, "U")
    assert type(full) is LimitExceeded and not full.transient
    busy = translate(
        FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_concurrent_streams",
            (("mpcagg-retryable", "1"),),
        ),
        0,
        "Upload",
    )
    assert type(busy) is Busy and isinstance(busy, LimitExceeded) and busy.transient


def test_round_rejected_is_a_round_state_error() -> None:
    err = translate(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "closed"), 0, "Upload")
    assert isinstance(err, RoundStateError)


def test_retry_call_retries_transient_then_succeeds() -> None:
    sleeps: list[float] = []
    calls = iter(
        [
            Unavailable("", party=0, method="GetRound", code="UNAVAILABLE"),
            Unavailable("", party=0, method="GetRound", code="ABORTED"),
            42,
        ]
    )

    def op() -> int:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    policy = tr.RetryPolicy(attempts=3, initial_backoff_s=1.0, max_backoff_s=1.5, multiplier=2.0)
    assert tr.retry_call(op, policy, sleep=sleeps.append) == 42
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 0.75 <= sleeps[1] <= 1.5


def test_retry_call_is_bounded_and_does_not_retry_permanent_errors() -> None:
    sleeps: list[float] = []
    count = 0

    def unavailable() -> None:
        nonlocal count
        count += 1
        raise Unavailable("down", party=1, method="Upload", code="UNAVAILABLE")

    with pytest.raises(Unavailable):
        tr.retry_call(
            unavailable, tr.RetryPolicy(attempts=4, initial_backoff_s=0), sleep=sleeps.append
        )
    assert count == 4 and len(sleeps) == 3

    count = 0

    def invalid() -> None:
        nonlocal count
        count += 1
        raise InvalidArgument("bad", party=1, method="Upload", code="INVALID_ARGUMENT")

    with pytest.raises(InvalidArgument):
        tr.retry_call(invalid, tr.RetryPolicy(attempts=4), sleep=sleeps.append)
    assert count == 1


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError, match="attempts"):
        tr.RetryPolicy(attempts=0)


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return create_ca()


@pytest.fixture(scope="module")
def alice(ca: KeyPair) -> ClientCredentials:
    pair = issue_client_cert(ca, "alice", "trainer")
    return ClientCredentials(pair.cert_pem, pair.key_pem)


def _files(tmp_path: Path, pair: KeyPair, name: str = "c") -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
    write_key_pair(pair, cert, key)
    return cert, key


def test_client_credentials_hide_the_key(alice: ClientCredentials) -> None:
    key_line = alice.key_pem.decode().splitlines()[1]
    assert repr(alice) == "ClientCredentials(trainer 'alice', key=<redacted>)"
    assert key_line not in str(alice)
    t = tr.Transport(cluster(), cert=alice)
    assert key_line not in repr(t) and "PRIVATE" not in repr(t)
    with pytest.raises(TypeError, match="refuse to be pickled"):
        pickle.dumps(alice)
    with pytest.raises(TypeError, match="refuse to be pickled"):
        copy.copy(alice)


def test_client_credentials_are_checked(tmp_path: Path, ca: KeyPair) -> None:
    bob = issue_client_cert(ca, "bob", "trainer")
    carol = issue_client_cert(ca, "carol", "trainer")
    party = issue_party_cert(ca, 0, ["localhost"])
    cases = [
        (b"not a certificate", bob.key_pem, "not a PEM certificate"),
        (bob.cert_pem, b"not a key", "not an unencrypted PEM private key"),
        (bob.cert_pem, carol.key_pem, "not the private key of the client certificate"),
        (party.cert_pem, party.key_pem, r"\(CN=party-0\) names no trainer or collector"),
    ]
    for cert_pem, key_pem, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            ClientCredentials(cert_pem, key_pem)
        assert "PRIVATE" not in str(err.value)
    cert, key = _files(tmp_path, bob)
    assert ClientCredentials.from_files(cert, key).identity.client_id == "bob"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="cannot read client key"):
        ClientCredentials.from_files(cert, tmp_path / "missing.pem")


def test_cert_and_key_go_together(tmp_path: Path, ca: KeyPair, alice: ClientCredentials) -> None:
    cert, key = _files(tmp_path, issue_client_cert(ca, "dave", "trainer"))
    assert tr.Transport(cluster(), cert=cert, key=key).client_id(None) == "dave"
    assert tr.Transport(cluster(), cert=str(cert), key=str(key)).client_id(None) == "dave"
    for kw in ({"cert": cert}, {"key": key}):
        with pytest.raises(ConfigError, match="needs both cert= and key="):
            tr.Transport(cluster(), **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not with ClientCredentials"):
        tr.Transport(cluster(), cert=alice, key=key)


def test_client_id_defaults_to_the_certificate_and_must_agree(
    ca: KeyPair, alice: ClientCredentials
) -> None:
    assert SecureAggregator(cluster(), cert=alice).client_id == "alice"
    assert SecureAggregator(cluster(), "alice", cert=alice).client_id == "alice"
    with pytest.raises(
        InputError, match="'bob' does not match the client certificate, which names"
    ):
        SecureAggregator(cluster(), "bob", cert=alice)
    with pytest.raises(InputError, match="client id must be"):
        SecureAggregator(cluster(), "a/b", cert=alice)
    with pytest.raises(InputError, match="a client id is needed"):
        SecureAggregator(cluster())  # no certificate, no id (a plaintext cluster)
    assert SecureAggregator(cluster(), "bob").client_id == "bob"
    pair = issue_client_cert(ca, "orchestrator", "collector")
    boss = ClientCredentials(pair.cert_pem, pair.key_pem)
    assert Collector(cluster(), cert=boss).client_id == "orchestrator"
    assert Collector(cluster()).client_id == "collector"
    with pytest.raises(InputError, match="does not match"):
        Collector(cluster(), "collector", cert=boss)


def test_a_tls_cluster_needs_a_client_certificate(tmp_path: Path, alice: ClientCredentials) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"CA")
    tls = cluster(tls=TlsConfig(ca=ca))
    for make in (
        lambda: tr.Transport(tls),
        lambda: SecureAggregator(tls, "alice"),
        lambda: Collector(tls),
    ):
        with pytest.raises(ConfigError, match="requires a client certificate issued by the"):
            make()
    assert tr.Transport(tls, cert=alice).credentials is alice


class _Sized(pb_grpc.AggregationServicer):  # type: ignore[misc]
    """Answers GetRound with a ``reason`` of ``reason_bytes``; takes a whole Upload and
    answers NOT_FOUND. Records each call that reached it."""

    def __init__(self) -> None:
        self.reason_bytes = 0
        self.calls: list[str] = []

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> Any:
        self.calls.append(f"GetRound {request.round_id}")
        return pb.RoundStatus(
            round_id=request.round_id, party=1, state=pb.OPEN, reason="x" * self.reason_bytes
        )

    def Upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append(f"Upload of {len(list(request_iterator))} messages")
        context.abort(grpc.StatusCode.NOT_FOUND, "no such round")


@pytest.fixture
def sized() -> Iterator[tuple[_Sized, int]]:
    """A plaintext Aggregation server on 127.0.0.1, port 0: (servicer, port)."""
    servicer = _Sized()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AggregationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None).wait(5)


def test_calls_go_to_the_partys_address_within_the_message_limit(
    sized: tuple[_Sized, int],
) -> None:
    """Party 1's calls reach party 1's address; a message beyond ``max_message_bytes``
    (far below gRPC's default of 4 MiB) is refused in either direction."""
    servicer, port = sized
    limit = 64 << 10
    limits = Limits(chunk_bytes=1024, max_message_bytes=limit)
    c = make_cluster(["127.0.0.1:1", f"127.0.0.1:{port}"], limits=limits)
    with tr.Transport(c) as t:
        servicer.reason_bytes = limit // 2
        assert t.get_round(1, "r1").reason == "x" * (limit // 2)
        servicer.reason_bytes = 2 * limit
        with pytest.raises(LimitExceeded) as received:
            t.get_round(1, "r2")
        small = iter([pb.UploadMessage(chunk=b"x" * (limit // 2))])
        with pytest.raises(NotFound):
            t.upload(1, small)
        big = iter([pb.UploadMessage(chunk=b"x" * (2 * limit))])
        with pytest.raises(LimitExceeded) as sent:
            t.upload(1, big)
    assert (received.value.party, received.value.method) == (1, "GetRound")
    assert (sent.value.party, sent.value.method) == (1, "Upload")
    # The oversized upload never reached the server; the oversized answer was sent.
    assert servicer.calls == ["GetRound r1", "GetRound r2", "Upload of 1 messages"]


def test_a_missing_cluster_ca_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster CA"):
        tr.Transport(cluster(tls=TlsConfig(ca=tmp_path / "missing.pem")))


def test_port_zero_is_looked_up_again_in_the_cluster_file(
    tmp_path: Path, sized: tuple[_Sized, int]
) -> None:
    """A party whose address still ends in ``:0`` (not started) is unavailable without
    dialling; once the file names its port, the same transport's calls reach it."""
    servicer, port = sized
    path = tmp_path / "cluster.toml"
    path.write_text(party_toml(0, "127.0.0.1:0") + party_toml(1, "127.0.0.1:1"))
    with tr.Transport(path) as t:
        with pytest.raises(Unavailable, match="port 0") as err:
            t.get_round(0, "r1")
        assert err.value.party == 0 and err.value.transient
        path.write_text(party_toml(0, f"127.0.0.1:{port}") + party_toml(1, "127.0.0.1:1"))
        assert t.get_round(0, "r1").round_id == "r1"
    assert servicer.calls == ["GetRound r1"]


def test_missing_cluster_file_is_a_client_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster file"):
        tr.Transport(tmp_path / "nope.toml")


class _WhoCalls(pb_grpc.AggregationServicer):  # type: ignore[misc]
    """Records who each GetRound came from, then answers NOT_FOUND."""

    def __init__(self) -> None:
        self.seen: list[tuple[Identity | None, dict[str, str]]] = []

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> Any:
        ident = client_from_auth_context(context.auth_context())
        self.seen.append((ident, dict(context.invocation_metadata())))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such round")


def test_the_certificate_is_presented_over_mutual_tls(tmp_path: Path, ca: KeyPair) -> None:
    """Against a real gRPC server that requires client certificates, as the parties do."""
    server_pair = issue_party_cert(ca, 0, ["127.0.0.1", "localhost"])
    servicer = _WhoCalls()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AggregationServicer_to_server(servicer, server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(server_pair.key_pem, server_pair.cert_pem)],
            root_certificates=ca.cert_pem,
            require_client_auth=True,
        ),
    )
    server.start()
    try:
        (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
        c = make_cluster(
            [f"127.0.0.1:{port}", "127.0.0.1:1"], tls=TlsConfig(ca=tmp_path / "ca.pem")
        )
        cert, key = _files(tmp_path, issue_client_cert(ca, "alice", "trainer"))
        with tr.Transport(c, cert=cert, key=key) as t, pytest.raises(NotFound):
            t.get_round(0, "r1")
        # A certificate from another CA does not get through the handshake.
        stranger = issue_client_cert(create_ca(), "alice", "trainer")
        with (
            tr.Transport(c, cert=ClientCredentials(stranger.cert_pem, stranger.key_pem)) as t,
            pytest.raises(Unavailable),
        ):
            t.get_round(0, "r1")
    finally:
        server.stop(grace=None).wait(5)
    assert len(servicer.seen) == 1
    ident, metadata = servicer.seen[0]
    assert ident is not None and (ident.client_id, ident.role) == ("alice", "trainer")
    assert "authorization" not in metadata, "no credential travels as metadata"
