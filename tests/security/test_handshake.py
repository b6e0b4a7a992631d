"""The client port's TLS handshake: a client certificate must come from the cluster CA,
be valid now and be meant for client authentication, or no request is ever read; the
role is the one the certificate's URI SAN names."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpcagg.ops.credentials import KeyPair, create_ca, issue_client_cert
from mpcagg.v1 import aggregation_pb2 as pb
from tests.security.conftest import (
    LENGTH,
    RPC_S,
    SecureEnv,
    assert_handshake_refused,
    code_of,
    error_of,
    seed_upload,
    spec_msg,
    start_env,
)

pytestmark = pytest.mark.timeout(120)

DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    yield from start_env(tmp_path_factory.mktemp("handshake"))


def _all_client_calls(env: SecureEnv, **channel: object) -> dict[str, Callable[[], object]]:
    stub = env.agg(1, **channel)  # type: ignore[arg-type]
    leader = env.agg(0, **channel)  # type: ignore[arg-type]
    return {
        "CreateRound": lambda: stub.CreateRound(
            pb.CreateRoundRequest(spec=spec_msg("anon")), timeout=RPC_S
        ),
        "GetRound": lambda: stub.GetRound(pb.GetRoundRequest(round_id="committed"), timeout=RPC_S),
        "Upload": lambda: stub.Upload(
            iter(seed_upload("committed", "t1", 1, LENGTH)), timeout=RPC_S
        ),
        "UploadWhole": lambda: stub.UploadWhole(
            pb.UploadRequest(header=seed_upload("committed", "t1", 1, LENGTH)[0].header),
            timeout=RPC_S,
        ),
        "Upload-malformed": lambda: stub.Upload(
            iter([pb.UploadMessage(chunk=b"x")]), timeout=RPC_S
        ),
        "CloseRound": lambda: leader.CloseRound(
            pb.CloseRoundRequest(round_id="committed"), timeout=RPC_S
        ),
        "GetAggregateShare": lambda: list(
            stub.GetAggregateShare(pb.GetAggregateShareRequest(round_id="committed"), timeout=RPC_S)
        ),
    }


CLIENT_METHODS = [
    "CreateRound",
    "GetRound",
    "Upload",
    "UploadWhole",
    "Upload-malformed",
    "CloseRound",
    "GetAggregateShare",
]


@pytest.mark.parametrize("method", CLIENT_METHODS)
def test_no_client_certificate_is_refused_at_the_handshake(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    """TLS without a client certificate: the client port takes no such connection, so no
    request is ever read (the collector's certificate gets the same call answered)."""
    assert_handshake_refused(_all_client_calls(env)[method])
    assert code_of(_all_client_calls(env, client=env.collector_pair())["GetRound"]) is (
        grpc.StatusCode.OK
    )


def _client_cert(
    issuer: KeyPair,
    client_id: str = "collector",
    role: str = "collector",
    *,
    not_before_s: float = -300.0,
    not_after_s: float = 3600.0,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    self_signed: bool = False,
) -> KeyPair:
    """A client certificate shaped like ``issue_client_cert``'s, with the validity window
    (seconds from now), extended key usage and signer under the test's control."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_id)])
    issuer_cert = issuer.certificate
    now = time.time()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if self_signed else issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now + not_before_s))
        .not_valid_after(_utc(now + not_after_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"mpcagg://{role}/{client_id}")]
            ),
            critical=False,
        )
        .sign(key if self_signed else issuer.private_key(), hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _bad_certs(env: SecureEnv) -> dict[str, KeyPair]:
    """Collector certificates that must not get in, each one change away from the control."""
    return {
        "expired": _client_cert(env.ca, not_before_s=-7200, not_after_s=-60),
        "not-yet-valid": _client_cert(env.ca, not_before_s=3600, not_after_s=7200),
        "foreign-ca": _client_cert(create_ca("mpcagg dev CA")),  # same CA name, other key
        "self-signed": _client_cert(env.ca, self_signed=True),
        "server-auth-only": _client_cert(env.ca, usage=ExtendedKeyUsageOID.SERVER_AUTH),
    }


BAD_CERTS = ["expired", "not-yet-valid", "foreign-ca", "self-signed", "server-auth-only"]


@pytest.mark.parametrize("kind", BAD_CERTS)
@pytest.mark.parametrize("method", ["GetRound", "CreateRound", "GetAggregateShare"])
def test_bad_client_certificates_are_refused_at_the_handshake(
    env: SecureEnv, committed: pb.RoundSpec, kind: str, method: str
) -> None:
    bad = _bad_certs(env)[kind]
    assert_handshake_refused(_all_client_calls(env, client=bad)[method])


def test_the_bad_certificates_differ_from_a_good_one_only_in_what_they_vary(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    """Control: the same construction, valid now, signed by the cluster CA, gets in."""
    good = _client_cert(env.ca)
    assert code_of(_all_client_calls(env, client=good)["GetRound"]) is grpc.StatusCode.OK
    assert code_of(_all_client_calls(env, client=good)["GetAggregateShare"]) is grpc.StatusCode.OK


def test_a_certificate_naming_another_role_is_that_role(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    """The role is the URI SAN's, which only the CA can write: a trainer certificate whose
    id is "collector" is still a trainer."""
    fake = issue_client_cert(env.ca, "collector", "trainer")
    for method in ("CreateRound", "CloseRound"):
        err = error_of(_all_client_calls(env, client=fake)[method])
        assert err.code() is DENIED and "'collector' has role trainer" in (err.details() or "")
