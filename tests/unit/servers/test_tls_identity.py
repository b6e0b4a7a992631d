"""Identities from gRPC auth contexts, and real mutual TLS through gRPC: who a verified
certificate makes the caller (servers.credentials)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest

from mpcagg.ops.credentials import (
    Identity,
    KeyPair,
    client_from_auth_context,
    create_ca,
    issue_client_cert,
    issue_party_cert,
    party_from_auth_context,
)

RPC_TIMEOUT_S = 5.0


# --- auth context, as dictionaries ------------------------------------------------------------


def _auth_context(cn: bytes, *sans: bytes, tls: bool = True) -> dict[str, list[bytes]]:
    context = {
        "x509_common_name": [cn],
        "x509_subject_alternative_name": list(sans),
        "peer_uri": [s for s in sans if b"://" in s],
    }
    if tls:
        context["transport_security_type"] = [b"ssl"]
    return context


def test_party_from_auth_context_needs_matching_cn_and_one_party_uri() -> None:
    assert party_from_auth_context(_auth_context(b"party-2", b"h", b"mpcagg://party/2")) == 2
    bytes_keys = {k.encode(): v for k, v in _auth_context(b"party-0", b"mpcagg://party/0").items()}
    assert party_from_auth_context(bytes_keys) == 0
    assert party_from_auth_context(_auth_context(b"party-1", b"mpcagg://party/2")) is None
    two = _auth_context(b"party-1", b"mpcagg://party/1", b"mpcagg://party/2")
    assert party_from_auth_context(two) is None
    assert party_from_auth_context(_auth_context(b"party-1", b"mpcagg://party/01")) is None
    assert party_from_auth_context(_auth_context(b"party-1", b"mpcagg://party/+1")) is None
    no_tls = _auth_context(b"party-1", b"mpcagg://party/1", tls=False)
    assert party_from_auth_context(no_tls) is None
    assert party_from_auth_context({}) is None
    trainer = _auth_context(b"t1", b"mpcagg://trainer/t1")
    assert party_from_auth_context(trainer) is None


def test_client_from_auth_context() -> None:
    found = client_from_auth_context(_auth_context(b"t1", b"mpcagg://trainer/t1"))
    assert found == Identity("t1", "trainer", float("inf"))
    assert client_from_auth_context(_auth_context(b"t2", b"mpcagg://trainer/t1")) is None
    assert client_from_auth_context(_auth_context(b"party-1", b"mpcagg://party/1")) is None
    assert client_from_auth_context(_auth_context(b"a/b", b"mpcagg://trainer/a/b")) is None


# --- real TLS through gRPC --------------------------------------------------------------------


@dataclass
class Seen:
    keys: list[str]
    party: int | None
    client: Identity | None


def _echo_server(credentials: grpc.ServerCredentials, seen: list[Seen]) -> tuple[grpc.Server, int]:
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        seen.append(
            Seen(sorted(auth), party_from_auth_context(auth), client_from_auth_context(auth))
        )
        return request

    handler = grpc.method_handlers_generic_handler(
        "mpcagg.test.Echo",
        {
            "Who": grpc.unary_unary_rpc_method_handler(
                who, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def _call(port: int, ca: KeyPair, client: KeyPair | None) -> bytes:
    if client is None:
        credentials = grpc.ssl_channel_credentials(ca.cert_pem)
    else:
        credentials = grpc.ssl_channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        result: bytes = channel.unary_unary("/mpcagg.test.Echo/Who")(b"ping", timeout=RPC_TIMEOUT_S)
        return result


@pytest.fixture(scope="module")
def server_pair(ca: KeyPair) -> KeyPair:
    return issue_party_cert(ca, 0, ["localhost", "127.0.0.1"])


def _serving(
    ca: KeyPair, server_pair: KeyPair, *, require_client_auth: bool
) -> Iterator[tuple[int, list[Seen]]]:
    """An echo server on TLS with ``server_pair``, asking for a client certificate or not."""
    seen: list[Seen] = []
    credentials = grpc.ssl_server_credentials(
        [(server_pair.key_pem, server_pair.cert_pem)],
        root_certificates=ca.cert_pem,
        require_client_auth=require_client_auth,
    )
    server, port = _echo_server(credentials, seen)
    yield port, seen
    server.stop(grace=None).wait(RPC_TIMEOUT_S)


@pytest.fixture
def mtls_server(ca: KeyPair, server_pair: KeyPair) -> Iterator[tuple[int, list[Seen]]]:
    yield from _serving(ca, server_pair, require_client_auth=True)


@pytest.fixture
def tls_server(ca: KeyPair, server_pair: KeyPair) -> Iterator[tuple[int, list[Seen]]]:
    yield from _serving(ca, server_pair, require_client_auth=False)


def test_mtls_peer_with_a_party_cert_is_that_party(
    mtls_server: tuple[int, list[Seen]], ca: KeyPair, party1: KeyPair
) -> None:
    port, seen = mtls_server
    assert _call(port, ca, party1) == b"ping"
    assert seen[-1].party == 1 and seen[-1].client is None
    # The keys grpc 1.85 puts in the auth context of a verified client certificate.
    for key in (
        "transport_security_type",
        "x509_common_name",
        "x509_subject_alternative_name",
        "x509_pem_cert",
        "peer_uri",
    ):
        assert key in seen[-1].keys


def test_mtls_peer_with_a_client_cert_is_that_client(
    mtls_server: tuple[int, list[Seen]], ca: KeyPair
) -> None:
    port, seen = mtls_server
    collector = issue_client_cert(
        ca, "collector", "collector", valid_days=30
    )  # real TLS: real time
    assert _call(port, ca, collector) == b"ping"
    expires = collector.certificate.not_valid_after_utc.timestamp()
    assert seen[-1].party is None
    assert seen[-1].client == Identity("collector", "collector", expires)


def test_mtls_refuses_a_foreign_ca_and_a_missing_cert(
    mtls_server: tuple[int, list[Seen]], ca: KeyPair
) -> None:
    port, seen = mtls_server
    foreign = issue_party_cert(create_ca(), 1, ["localhost", "127.0.0.1"])
    for client in (foreign, None):
        with pytest.raises(grpc.RpcError) as caught:
            _call(port, ca, client)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []


def test_tls_only_port_identifies_nobody(
    tls_server: tuple[int, list[Seen]], ca: KeyPair, party1: KeyPair
) -> None:
    """grpc Python never requests a client certificate unless require_client_auth=True."""
    port, seen = tls_server
    assert _call(port, ca, None) == b"ping"
    assert seen[-1].party is None and seen[-1].client is None
    assert "transport_security_type" in seen[-1].keys
    assert _call(port, ca, party1) == b"ping"
    assert seen[-1].party is None  # the certificate was never asked for
    assert not any(key.startswith("x509_") for key in seen[-1].keys)
