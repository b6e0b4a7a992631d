"""X.509 credentials: a CA, party and client certificates, and PEM files.

Keys are EC P-256 (ECDSA with SHA-256), which every TLS stack gRPC links accepts.
A party certificate names its party twice, as CN ``party-<i>`` and as the URI
SAN ``mpcagg://party/<i>``; a client certificate carries ``mpcagg://<role>/<id>`` and
CN ``<id>``. Only a CA key holder can mint either, so a verified TLS peer's URI SAN is
its identity (read back by :mod:`servers.identity`).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpcagg.protocol.files import write_atomic
from mpcagg.protocol.identity import MAX_PARTY, Role, check_role, client_uri, party_uri, read_pem
from mpcagg.protocol.spec import check_id

Clock = Callable[[], float]
"""Seconds since the epoch; ``time.time`` in production, a fake in tests."""

_BACKDATE: Final = timedelta(minutes=5)
"""Certificates start a little in the past so a peer whose clock lags still accepts them."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        try:
            subject = self.certificate.subject.rfc4514_string()
        except ValueError:
            subject = "<unparsable>"
        return f"KeyPair(subject={subject!r}, key_pem=<redacted>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("KeyPair holds a private key and is not picklable")

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The private key; ``ValueError`` if it is not an EC key."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"expected an EC private key, got {type(key).__name__}")
        return key

    def key_matches_certificate(self) -> bool:
        """Whether the private key is the one the certificate was issued for."""
        return self.private_key().public_key() == self.certificate.public_key()


def create_ca(
    common_name: str = "mpcagg dev CA", valid_days: int = 365, *, clock: Clock = time.time
) -> KeyPair:
    """A self-signed CA (path length 0: it signs leaf certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(clock, valid_days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def issue_party_cert(
    ca: KeyPair,
    party: int,
    hosts: Sequence[str],
    valid_days: int = 365,
    *,
    clock: Clock = time.time,
) -> KeyPair:
    """A server-and-client certificate for aggregation party ``party``.

    SANs: each of ``hosts`` as an IP address if it parses as one, else as a DNS
    name, plus ``mpcagg://party/<party>``. EKU serverAuth and clientAuth, since
    parties also dial each other with mutual TLS.

    Raises:
        ValueError: negative party, no hosts, a host that is neither an IP address
            nor an ASCII DNS name, or a ``ca`` that is not a CA with its key.
    """
    if isinstance(party, bool) or not isinstance(party, int) or not 0 <= party < MAX_PARTY:
        raise ValueError(f"party index must be an integer in [0, {MAX_PARTY}), got {party!r}")
    names: list[x509.GeneralName] = _host_names(hosts)
    names.append(x509.UniformResourceIdentifier(party_uri(party)))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, f"party-{party}", names, usages, valid_days, clock)


def issue_client_cert(
    ca: KeyPair,
    client_id: str,
    role: Role,
    valid_days: int = 365,
    *,
    clock: Clock = time.time,
) -> KeyPair:
    """A client certificate (EKU clientAuth) for a trainer or the collector.

    CN is ``client_id``; the URI SAN ``mpcagg://<role>/<client_id>`` carries the
    identity :func:`client_from_auth_context` reads back.

    Raises:
        InvalidArgument: invalid client id or unknown role.
        ValueError: ``valid_days`` is not a positive integer, or ``ca`` is no CA with its key.
    """
    check_id("client id", client_id)
    checked_role = check_role(role)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(client_uri(checked_role, client_id))
    ]
    return _issue(ca, client_id, names, [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days, clock)


def is_issued_by(cert: KeyPair | bytes, ca: KeyPair, *, clock: Clock = time.time) -> bool:
    """Whether ``cert`` is signed by ``ca``'s key and valid at the clock's time."""
    leaf = x509.load_pem_x509_certificate(cert.cert_pem if isinstance(cert, KeyPair) else cert)
    ca_cert = ca.certificate
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    now = datetime.fromtimestamp(clock(), UTC)
    return leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc


def write_private_pem(path: Path | str, pem: bytes) -> None:
    """Atomically write ``pem`` to ``path`` with mode 0600 (an existing file is replaced)."""
    write_atomic(Path(path), pem, 0o600)


def write_public_pem(path: Path | str, pem: bytes) -> None:
    """Atomically write ``pem`` to ``path`` with mode 0644."""
    write_atomic(Path(path), pem, 0o644)


def write_key_pair(pair: KeyPair, cert_path: Path | str, key_path: Path | str) -> None:
    """Write the key (0600) first, then the certificate (0644)."""
    write_private_pem(key_path, pair.key_pem)
    write_public_pem(cert_path, pair.cert_pem)


def load_key_pair(cert_path: Path | str, key_path: Path | str) -> KeyPair:
    """Load a certificate and its key; ``ValueError`` if they do not belong together."""
    pair = KeyPair(read_pem(cert_path), read_pem(key_path))
    if not pair.key_matches_certificate():
        raise ValueError(f"{key_path} is not the private key of the certificate in {cert_path}")
    return pair


def _issue(
    ca: KeyPair,
    common_name: str,
    names: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    valid_days: int,
    clock: Clock,
) -> KeyPair:
    ca_cert, ca_key = _ca_parts(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(clock, valid_days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def _ca_parts(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = ca.certificate
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(f"{cert.subject.rfc4514_string()} is not a CA certificate")
    key = ca.private_key()
    if key.public_key() != cert.public_key():
        raise ValueError("the CA key does not belong to the CA certificate")
    return cert, key


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        raise ValueError(f"hosts must be a sequence of host names, not the string {hosts!r}")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not host or not host.isascii() or any(c.isspace() or c in "/:@" for c in host):
            raise ValueError(f"host {host!r} is neither an IP address nor an ASCII DNS name")
        names.append(x509.DNSName(host.lower()))
    if not names:
        raise ValueError("a party certificate needs at least one host name or IP address")
    return names


def _validity(clock: Clock, valid_days: int) -> tuple[datetime, datetime]:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days <= 0:
        raise ValueError(f"valid_days must be a positive integer, got {valid_days!r}")
    now = datetime.fromtimestamp(clock(), UTC)
    return now - _BACKDATE, now + timedelta(days=valid_days)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
