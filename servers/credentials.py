"""Credentials of an mpcagg cluster: TLS certificates, client tokens, key files.

The public surface of :mod:`servers.pki` (X.509) and :mod:`servers.tokens`
(Ed25519-signed bearer tokens), plus token key files and :func:`provision_dev`,
the development recipe behind ``mpcagg certs`` and ``mpcagg up``.

Who holds what:

- every party: ``ca.pem``, its own ``party-<i>.pem`` / ``party-<i>-key.pem``
  (server and peer-client certificate), and ``token-public-key.pem``;
- the operator (never a server): ``ca-key.pem`` and ``token-signing-key.pem``;
- trainers and the collector: ``ca.pem`` and a token, or a client certificate.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from servers.pki import (
    AuthContext,
    KeyPair,
    client_from_auth_context,
    client_uri,
    create_ca,
    is_issued_by,
    issue_client_cert,
    issue_party_cert,
    load_key_pair,
    party_from_auth_context,
    party_uri,
    read_pem,
    write_key_pair,
    write_private_pem,
    write_public_pem,
)
from servers.tokens import (
    ROLES,
    Clock,
    Identity,
    Role,
    TokenIssuer,
    TokenVerifier,
    check_client_id,
)

__all__ = [
    "ROLES",
    "AuthContext",
    "CertFiles",
    "Clock",
    "DevCredentials",
    "Identity",
    "KeyPair",
    "Role",
    "TokenIssuer",
    "TokenVerifier",
    "check_client_id",
    "client_from_auth_context",
    "client_uri",
    "create_ca",
    "is_issued_by",
    "issue_client_cert",
    "issue_party_cert",
    "load_key_pair",
    "load_token_public_key",
    "load_token_signing_key",
    "party_from_auth_context",
    "party_uri",
    "provision_dev",
    "read_pem",
    "write_key_pair",
    "write_private_pem",
    "write_public_pem",
    "write_token_public_key",
    "write_token_signing_key",
]

_RENEW_BEFORE: Final = timedelta(days=1)
"""A reused certificate must stay valid at least this long, else it is reissued."""


def write_token_signing_key(path: Path | str, key: Ed25519PrivateKey) -> None:
    """Save the token signing key as unencrypted PKCS#8 PEM, mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_pem(path, pem)


def load_token_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key; ``ValueError`` if the file holds another kind."""
    key = serialization.load_pem_private_key(read_pem(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, expected an Ed25519 private key")
    return key


def write_token_public_key(path: Path | str, key: Ed25519PublicKey) -> None:
    """Save the token verification key as SubjectPublicKeyInfo PEM, mode 0644."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_public_pem(path, pem)


def load_token_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key; ``ValueError`` for another kind."""
    key = serialization.load_pem_public_key(read_pem(path))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, expected an Ed25519 public key")
    return key


@dataclass(frozen=True)
class CertFiles:
    """Where a certificate and its private key live."""

    cert: Path
    key: Path

    def load(self) -> KeyPair:
        return load_key_pair(self.cert, self.key)


@dataclass(frozen=True)
class DevCredentials:
    """The files :func:`provision_dev` wrote or reused."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    parties: tuple[CertFiles, ...]
    """Index i holds party i's certificate and key."""
    token_signing_key: Path
    token_public_key: Path
    collector: CertFiles
    trainer_ids: tuple[str, ...]
    trainers: tuple[CertFiles, ...]
    """Aligned with ``trainer_ids``."""

    def trainer(self, client_id: str) -> CertFiles:
        """Trainer ``client_id``'s certificate files; ``KeyError`` if it was not provisioned."""
        try:
            return self.trainers[self.trainer_ids.index(client_id)]
        except ValueError:
            raise KeyError(f"trainer {client_id!r} was not provisioned") from None


def provision_dev(
    directory: Path,
    n_parties: int,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    collector_id: str = "collector",
    trainer_ids: Sequence[str] = (),
    *,
    clock: Clock = time.time,
) -> DevCredentials:
    """Write (or reuse) a development CA, party certificates, client certificates and token keys.

    Files in ``directory`` (created 0700 if missing); private keys are mode 0600:
    ``ca.pem``, ``ca-key.pem``, ``party-<i>.pem``, ``party-<i>-key.pem``,
    ``token-signing-key.pem``, ``token-public-key.pem``, ``collector.pem``,
    ``collector-key.pem``, ``trainer-<id>.pem``, ``trainer-<id>-key.pem``.

    Idempotent: existing files are reused. A leaf certificate is reissued only if
    it no longer fits: not signed by the CA in ``directory``, expiring within a
    day, or missing one of ``hosts`` / its identity. Concurrent calls on the same
    directory are serialised by an ``flock`` on ``directory/.lock``.

    Raises:
        ValueError: ``n_parties < 1``, invalid ids or hosts, or a CA that cannot be
            reused (half present, key mismatch, expired): the message says which, and
            deleting the directory starts afresh.
    """
    if isinstance(n_parties, bool) or not isinstance(n_parties, int) or n_parties < 1:
        raise ValueError(f"n_parties must be a positive integer, got {n_parties!r}")
    check_client_id(collector_id)
    trainers = tuple(dict.fromkeys(check_client_id(t) for t in trainer_ids))
    hosts = tuple(hosts)
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(directory):
        ca = _ensure_ca(directory, clock)
        parties = tuple(
            _ensure_leaf(
                CertFiles(directory / f"party-{i}.pem", directory / f"party-{i}-key.pem"),
                ca,
                _wanted_sans(hosts, party_uri(i)),
                partial(issue_party_cert, ca, i, hosts, clock=clock),
                clock,
            )
            for i in range(n_parties)
        )
        collector = _ensure_client(directory, "collector", "collector", collector_id, ca, clock)
        trainer_files = tuple(
            _ensure_client(directory, f"trainer-{t}", "trainer", t, ca, clock) for t in trainers
        )
        signing, public = _ensure_token_keys(directory)
    return DevCredentials(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        parties=parties,
        token_signing_key=signing,
        token_public_key=public,
        collector=collector,
        trainer_ids=trainers,
        trainers=trainer_files,
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_ca(directory: Path, clock: Clock) -> KeyPair:
    files = CertFiles(directory / "ca.pem", directory / "ca-key.pem")
    present = [p.name for p in (files.cert, files.key) if p.exists()]
    if not present:
        ca = create_ca(clock=clock)
        write_key_pair(ca, files.cert, files.key)
        return ca
    if len(present) == 1:
        raise ValueError(
            f"{directory} has {present[0]} but not its counterpart; restore it or delete "
            f"the directory to start a new CA"
        )
    ca = files.load()
    if not is_issued_by(ca, ca, clock=clock):
        raise ValueError(
            f"{files.cert} is not a valid self-signed certificate at this time (expired?); "
            f"delete {directory} to start a new CA"
        )
    os.chmod(files.key, 0o600)
    return ca


def _ensure_client(
    directory: Path, stem: str, role: Role, client_id: str, ca: KeyPair, clock: Clock
) -> CertFiles:
    files = CertFiles(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    wanted: set[x509.GeneralName] = {x509.UniformResourceIdentifier(client_uri(role, client_id))}
    issue = partial(issue_client_cert, ca, client_id, role, clock=clock)
    return _ensure_leaf(files, ca, wanted, issue, clock)


def _ensure_leaf(
    files: CertFiles,
    ca: KeyPair,
    wanted: set[x509.GeneralName],
    issue: Callable[[], KeyPair],
    clock: Clock,
) -> CertFiles:
    if not _reusable(files, ca, wanted, clock):
        write_key_pair(issue(), files.cert, files.key)
    else:
        os.chmod(files.key, 0o600)
    return files


def _reusable(files: CertFiles, ca: KeyPair, wanted: set[x509.GeneralName], clock: Clock) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        pair = files.load()
        cert = pair.certificate
        sans = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (ValueError, x509.ExtensionNotFound):
        return False
    soon = datetime.fromtimestamp(clock(), UTC) + _RENEW_BEFORE
    return (
        is_issued_by(pair, ca, clock=clock) and cert.not_valid_after_utc > soon and wanted <= sans
    )


def _wanted_sans(hosts: Sequence[str], uri: str) -> set[x509.GeneralName]:
    wanted: set[x509.GeneralName] = {x509.UniformResourceIdentifier(uri)}
    for host in hosts:
        try:
            wanted.add(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            wanted.add(x509.DNSName(host.lower()))
    return wanted


def _ensure_token_keys(directory: Path) -> tuple[Path, Path]:
    signing_path = directory / "token-signing-key.pem"
    public_path = directory / "token-public-key.pem"
    if signing_path.exists():
        signing = load_token_signing_key(signing_path)
        os.chmod(signing_path, 0o600)
    else:
        signing = Ed25519PrivateKey.generate()
        write_token_signing_key(signing_path, signing)
    public = signing.public_key()
    try:
        current: Ed25519PublicKey | None = load_token_public_key(public_path)
    except (FileNotFoundError, ValueError):
        current = None
    if current != public:
        write_token_public_key(public_path, public)
    return signing_path, public_path
