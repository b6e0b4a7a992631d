"""Tests of servers.auth: who a caller is on the client port, from its verified certificate.

The auth contexts are dictionaries shaped like the ones gRPC fills after verifying a
client certificate (tests/unit/servers/test_credentials.py checks the real keys).
"""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from mpcagg.ops.credentials import Identity, KeyPair, create_ca, issue_client_cert, issue_party_cert
from mpcagg.protocol.errors import PermissionDenied, Unauthenticated
from mpcagg.servers.auth import Authenticator

NOW = 1_800_000_000.0


class FakeContext:
    """What the Authenticator reads of a ``grpc.ServicerContext``."""

    def __init__(self, auth: dict[str, list[bytes]], metadata: tuple[Any, ...] = ()) -> None:
        self._auth = auth
        self._metadata = metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata


def _context(pair: KeyPair | None, metadata: tuple[Any, ...] = ()) -> grpc.ServicerContext:
    """The auth context gRPC builds for a TLS connection presenting ``pair`` (or none)."""
    auth: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    if pair is not None:
        cert = pair.certificate
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u.encode() for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
        auth |= {
            "x509_common_name": [str(cn).encode()],
            "x509_subject_alternative_name": uris,
            "peer_uri": uris,
            "x509_pem_cert": [pair.cert_pem],
        }
    return cast(grpc.ServicerContext, FakeContext(auth, metadata))


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return create_ca(clock=lambda: NOW)


def _role(ident: Identity | None) -> str:
    assert ident is not None
    return ident.role


def _auth(now: float = NOW) -> Authenticator:
    return Authenticator(enforcing=True, clock=lambda: now)


def test_a_client_certificate_is_the_callers_identity(ca: KeyPair) -> None:
    pair = issue_client_cert(ca, "t1", "trainer", valid_days=1, clock=lambda: NOW)
    expires = pair.certificate.not_valid_after_utc.timestamp()
    assert _auth().identify(_context(pair)) == Identity("t1", "trainer", expires)


def test_no_certificate_is_unauthenticated_with_what_was_expected() -> None:
    with pytest.raises(
        Unauthenticated, match="expected a client certificate issued by the cluster"
    ):
        _auth().identify(_context(None))
    plaintext = cast(grpc.ServicerContext, FakeContext({"transport_security_type": [b"insecure"]}))
    with pytest.raises(Unauthenticated, match="no trainer or collector identity"):
        _auth().identify(plaintext)


def test_metadata_is_no_credential(ca: KeyPair) -> None:
    """An old-style bearer header identifies nobody; the certificate alone decides."""
    bare = _context(None, (("authorization", "Bearer anything"),))
    with pytest.raises(Unauthenticated):
        _auth().identify(bare)
    pair = issue_client_cert(ca, "t1", "trainer", clock=lambda: NOW)
    dressed = _context(pair, (("authorization", "Bearer collector"),))
    assert _role(_auth().identify(dressed)) == "trainer"


def test_a_party_certificate_is_no_client_identity(ca: KeyPair) -> None:
    party = issue_party_cert(ca, 0, ["localhost"], clock=lambda: NOW)
    with pytest.raises(Unauthenticated, match="party 0's certificate identifies a server"):
        _auth().require(_context(party), "collector")


def test_a_certificate_that_expired_during_its_connection_is_refused(ca: KeyPair) -> None:
    pair = issue_client_cert(ca, "collector", "collector", valid_days=1, clock=lambda: NOW)
    expires = pair.certificate.not_valid_after_utc.timestamp()
    assert _auth(expires).identify(_context(pair)) is not None
    with pytest.raises(Unauthenticated, match="client certificate of 'collector' expired at"):
        _auth(expires + 1).identify(_context(pair))


def test_roles_and_client_ids_are_enforced(ca: KeyPair) -> None:
    trainer = _context(issue_client_cert(ca, "t1", "trainer", clock=lambda: NOW))
    collector = _context(issue_client_cert(ca, "collector", "collector", clock=lambda: NOW))
    auth = _auth()
    assert _role(auth.require(collector, "collector")) == "collector"
    with pytest.raises(
        PermissionDenied, match="needs role collector; caller 't1' has role trainer"
    ):
        auth.require(trainer, "collector")
    assert auth.require_client(trainer, "t1") == _auth().identify(trainer)
    with pytest.raises(PermissionDenied, match="authenticated as 't1' but the request names"):
        auth.require_client(trainer, "t2")
    with pytest.raises(PermissionDenied, match="needs role trainer"):
        auth.require_client(collector, "collector")


def test_insecure_mode_checks_nobody() -> None:
    auth = Authenticator(enforcing=False)
    assert auth.identify(_context(None)) is None
    assert auth.require_client(_context(None), "anyone") is None
