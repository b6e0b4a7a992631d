"""Tests of servers.credentials (pki): certificates, key files, provisioning; identities and
real TLS are in test_tls_identity.py."""

from __future__ import annotations

import ipaddress
import os
import pickle
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpcagg.ops.credentials import (
    Identity,
    KeyPair,
    certificate_identity,
    create_ca,
    is_issued_by,
    issue_client_cert,
    issue_party_cert,
    load_key_pair,
    provision_client,
    provision_dev,
    write_key_pair,
    write_private_pem,
    write_public_pem,
)
from mpcagg.protocol.errors import InvalidArgument

NOW = 1_800_000_000.0  # a fixed instant (2027-01-15) for every fake clock


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(pair: KeyPair) -> x509.SubjectAlternativeName:
    return pair.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _store(ca: KeyPair) -> verification.Store:
    return verification.Store([ca.certificate])


# --- certificates -------------------------------------------------------------------------


def test_ca_is_a_self_signed_p256_ca(ca: KeyPair) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.private_key().curve, ec.SECP256R1)
    assert is_issued_by(ca, ca)
    assert ca.key_matches_certificate()


def test_party_cert_verifies_as_server_and_as_client(ca: KeyPair, party1: KeyPair) -> None:
    cert = party1.certificate
    server = verification.PolicyBuilder().store(_store(ca)).build_server_verifier
    for name in (x509.DNSName("localhost"), x509.IPAddress(_ip("127.0.0.1"))):
        chain = server(name).verify(cert, [])
        assert chain[-1] == ca.certificate
    client = verification.PolicyBuilder().store(_store(ca)).build_client_verifier()
    verified = client.verify(cert, [])
    assert x509.UniformResourceIdentifier("mpcagg://party/1") in (verified.subjects or [])
    assert is_issued_by(party1, ca)


def test_party_cert_names_and_usages(party1: KeyPair) -> None:
    cert = party1.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "party-1"
    sans = _sans(party1)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "party1.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [_ip("127.0.0.1")]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["mpcagg://party/1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert party1.key_matches_certificate()


def test_client_cert_is_client_only(ca: KeyPair) -> None:
    pair = issue_client_cert(ca, "trainer-7", "trainer")
    assert _sans(pair).get_values_for_type(x509.UniformResourceIdentifier) == [
        "mpcagg://trainer/trainer-7"
    ]
    assert pair.certificate.subject.rfc4514_string() == "CN=trainer-7"
    client = verification.PolicyBuilder().store(_store(ca)).build_client_verifier()
    client.verify(pair.certificate, [])
    server = (
        verification.PolicyBuilder()
        .store(_store(ca))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(verification.VerificationError):
        server.verify(pair.certificate, [])


def test_cert_from_a_foreign_ca_does_not_verify(ca: KeyPair) -> None:
    foreign = issue_party_cert(create_ca(), 1, ["localhost"])  # same CA name, other key
    assert not is_issued_by(foreign, ca)
    client = verification.PolicyBuilder().store(_store(ca)).build_client_verifier()
    with pytest.raises(verification.VerificationError):
        client.verify(foreign.certificate, [])


def test_leaf_validity_follows_the_clock_and_stays_within_the_ca(ca: KeyPair) -> None:
    clock = FakeClock()
    short_ca = create_ca(valid_days=10, clock=clock)
    leaf = issue_party_cert(short_ca, 0, ["localhost"], valid_days=365, clock=clock)
    assert leaf.certificate.not_valid_after_utc == short_ca.certificate.not_valid_after_utc
    assert leaf.certificate.not_valid_before_utc < datetime.fromtimestamp(NOW, UTC)
    assert is_issued_by(leaf, short_ca, clock=clock)
    clock.now += 11 * 86400
    assert not is_issued_by(leaf, short_ca, clock=clock)


@pytest.mark.parametrize(
    ("party", "hosts", "message"),
    [
        (-1, ["localhost"], "party index"),
        (True, ["localhost"], "party index"),
        (0, [], "at least one host"),
        (0, "localhost", "sequence of host names"),
        (0, ["bad host"], "neither an IP address"),
        (0, ["hôte.example"], "neither an IP address"),
    ],
)
def test_issue_party_cert_refuses_bad_arguments(
    ca: KeyPair, party: int, hosts: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        issue_party_cert(ca, party, hosts)


def test_only_a_ca_can_issue(party1: KeyPair) -> None:
    with pytest.raises(ValueError, match="not a CA certificate"):
        issue_party_cert(party1, 2, ["localhost"])


@pytest.mark.parametrize("client_id", ["", "-x", "a/b", "a b", "x" * 129, "é"])
def test_client_ids_are_restricted(ca: KeyPair, client_id: str) -> None:
    with pytest.raises(InvalidArgument, match="client id must be 1-128 characters"):
        issue_client_cert(ca, client_id, "trainer")


def test_unknown_client_role_is_refused(ca: KeyPair) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown role 'admin' \(expected one of trainer"):
        issue_client_cert(ca, "c1", "admin")  # type: ignore[arg-type]


def test_certificate_identity_reads_what_issue_client_cert_wrote(ca: KeyPair) -> None:
    pair = issue_client_cert(ca, "trainer-7", "trainer", valid_days=3)
    expires = pair.certificate.not_valid_after_utc.timestamp()
    assert certificate_identity(pair.cert_pem) == Identity("trainer-7", "trainer", expires)
    collector = issue_client_cert(ca, "collector", "collector")
    assert certificate_identity(collector.cert_pem).role == "collector"  # type: ignore[union-attr]
    assert certificate_identity(issue_party_cert(ca, 1, ["localhost"]).cert_pem) is None
    assert certificate_identity(ca.cert_pem) is None  # no SAN at all
    with pytest.raises(ValueError):
        certificate_identity(b"not a certificate")


def test_key_pair_hides_its_key(party1: KeyPair) -> None:
    text = repr(party1)
    assert "CN=party-1" in text and "<redacted>" in text
    assert "PRIVATE" not in text and party1.key_pem.decode() not in text
    assert "PRIVATE" not in str(party1)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(party1)


# --- key files ------------------------------------------------------------------------------


def test_private_pem_is_0600_even_with_a_lax_umask_or_an_existing_file(
    tmp_path: Path, party1: KeyPair
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    old_umask = os.umask(0)
    try:
        write_private_pem(path, party1.key_pem)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert path.read_bytes() == party1.key_pem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]  # no temporary left


def test_public_pem_is_0644_and_pairs_load_back(tmp_path: Path, party1: KeyPair) -> None:
    write_public_pem(tmp_path / "c.pem", party1.cert_pem)
    write_private_pem(tmp_path / "k.pem", party1.key_pem)
    assert _mode(tmp_path / "c.pem") == 0o644
    assert load_key_pair(tmp_path / "c.pem", tmp_path / "k.pem") == party1


def test_load_key_pair_refuses_a_foreign_key(tmp_path: Path, ca: KeyPair, party1: KeyPair) -> None:
    write_public_pem(tmp_path / "c.pem", party1.cert_pem)
    write_private_pem(tmp_path / "k.pem", ca.key_pem)
    with pytest.raises(ValueError, match="not the private key"):
        load_key_pair(tmp_path / "c.pem", tmp_path / "k.pem")


# --- provisioning ---------------------------------------------------------------------------


def test_provision_dev_writes_everything_with_tight_modes(tmp_path: Path) -> None:
    out = provision_dev(tmp_path / "dev", 3, trainer_ids=("t1", "t2"))
    names = sorted(p.name for p in out.directory.iterdir() if not p.name.startswith("."))
    assert names == sorted(
        ["ca.pem", "ca-key.pem"]
        + [f"party-{i}{s}.pem" for i in range(3) for s in ("", "-key")]
        + ["collector.pem", "collector-key.pem"]
        + [f"trainer-t{i}{s}.pem" for i in (1, 2) for s in ("", "-key")]
    )
    for key in (out.ca_key, out.collector.key, *(p.key for p in out.parties)):
        assert _mode(key) == 0o600, key
    assert _mode(out.directory) == 0o700
    ca = load_key_pair(out.ca_cert, out.ca_key)
    for i, files in enumerate(out.parties):
        pair = files.load()
        assert is_issued_by(pair, ca)
        uris = _sans(pair).get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"mpcagg://party/{i}"]
    assert _sans(out.trainer("t2").load()).get_values_for_type(x509.UniformResourceIdentifier) == [
        "mpcagg://trainer/t2"
    ]
    assert certificate_identity(out.collector.load().cert_pem) == Identity(
        "collector", "collector", out.collector.load().certificate.not_valid_after_utc.timestamp()
    )


def test_provision_dev_refuses_bad_client_ids(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="client id must be"):
        provision_dev(tmp_path, 3, trainer_ids=("ok", "not ok"))
    with pytest.raises(InvalidArgument, match="client id must be"):
        provision_dev(tmp_path, 3, collector_id="a/b")


def test_provision_client_issues_once_and_then_reuses(tmp_path: Path) -> None:
    clock = FakeClock()
    dev = provision_dev(tmp_path, 3, clock=clock)
    ca = load_key_pair(dev.ca_cert, dev.ca_key)
    files = provision_client(tmp_path, "hospital-7", clock=clock)
    assert (files.cert.name, files.key.name) == (
        "trainer-hospital-7.pem",
        "trainer-hospital-7-key.pem",
    )
    assert _mode(files.key) == 0o600
    pair = files.load()
    assert is_issued_by(pair, ca, clock=clock)
    ident = certificate_identity(pair.cert_pem)
    assert ident is not None and (ident.client_id, ident.role) == ("hospital-7", "trainer")
    assert provision_client(tmp_path, "hospital-7", clock=clock) == files
    assert files.load() == pair, "a certificate that still fits is reused"
    boss = provision_client(tmp_path, "boss", "collector", clock=clock)
    assert boss.cert.name == "collector-boss.pem"
    assert certificate_identity(boss.load().cert_pem).role == "collector"  # type: ignore[union-attr]
    assert provision_client(tmp_path, "collector", "collector", clock=clock) == dev.collector
    clock.now += 400 * 86400  # the CA has expired: nothing is issued under it
    with pytest.raises(ValueError, match="expired"):
        provision_client(tmp_path, "hospital-7", clock=clock)


def test_provision_client_needs_a_ca_and_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no CA"):
        provision_client(tmp_path / "nothing", "t1")
    provision_dev(tmp_path, 1)
    with pytest.raises(InvalidArgument, match="client id must be"):
        provision_client(tmp_path, "../t1")
    with pytest.raises(InvalidArgument, match="unknown role"):
        provision_client(tmp_path, "t1", "admin")
    assert not any("admin" in p.name or ".." in p.name for p in tmp_path.iterdir())


def test_provision_dev_is_idempotent(tmp_path: Path) -> None:
    first = provision_dev(tmp_path, 3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = provision_dev(tmp_path, 3)
    assert second == first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_provision_dev_reissues_only_what_no_longer_fits(tmp_path: Path) -> None:
    clock = FakeClock()
    out = provision_dev(tmp_path, 3, clock=clock)
    ca_before = out.ca_cert.read_bytes()
    party0_before = out.parties[0].cert.read_bytes()
    provision_dev(tmp_path, 3, hosts=("127.0.0.1", "localhost", "10.0.0.5"), clock=clock)
    assert out.ca_cert.read_bytes() == ca_before
    assert out.parties[0].cert.read_bytes() != party0_before
    assert x509.IPAddress(_ip("10.0.0.5")) in _sans(out.parties[0].load())
    party0_now = out.parties[0].cert.read_bytes()
    clock.now += 200 * 86400  # the CA and the leaves (365 days) still fit
    provision_dev(tmp_path, 3, hosts=("10.0.0.5",), clock=clock)
    assert out.parties[0].cert.read_bytes() == party0_now


def test_provision_dev_replaces_leaves_that_expire_soon_or_come_from_another_ca(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    out = provision_dev(tmp_path, 3, clock=clock)
    ca = load_key_pair(out.ca_cert, out.ca_key)
    hosts = ["127.0.0.1", "localhost"]
    expiring = issue_party_cert(ca, 0, hosts, valid_days=1, clock=clock)
    foreign = issue_party_cert(create_ca(clock=clock), 1, hosts, clock=clock)
    write_key_pair(expiring, out.parties[0].cert, out.parties[0].key)
    write_key_pair(foreign, out.parties[1].cert, out.parties[1].key)
    provision_dev(tmp_path, 3, clock=clock)
    for files, replaced in zip(out.parties[:2], (expiring, foreign), strict=True):
        pair = files.load()
        assert pair != replaced
        assert is_issued_by(pair, ca, clock=clock)


def test_provision_dev_refuses_half_a_ca(tmp_path: Path) -> None:
    out = provision_dev(tmp_path, 3)
    out.ca_key.unlink()
    with pytest.raises(ValueError, match=r"ca\.pem but not its counterpart"):
        provision_dev(tmp_path, 3)


def test_provision_dev_refuses_an_expired_ca(tmp_path: Path) -> None:
    clock = FakeClock()
    provision_dev(tmp_path, 3, clock=clock)
    clock.now += 400 * 86400
    with pytest.raises(ValueError, match="expired"):
        provision_dev(tmp_path, 3, clock=clock)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)
