"""Credentials of an mpcagg cluster: TLS certificates and key files.

The public surface of :mod:`servers.pki` (X.509 issuance, PEM files) and
:mod:`servers.identity` (who a verified TLS peer is), plus :func:`provision_dev` and
:func:`provision_client`, the development recipe behind ``mpcagg certs`` and ``mpcagg up``.

Who holds what:

- every party: ``ca.pem`` and its own ``party-<i>.pem`` / ``party-<i>-key.pem``
  (server certificate on both ports, client certificate towards the other parties);
- the operator (never a server): ``ca-key.pem``;
- each trainer and the collector: ``ca.pem`` and its own client certificate and key
  (``mpcagg://trainer/<id>`` or ``mpcagg://collector/<id>``), presented with mutual TLS
  on every party's client port. A party only ever sees the certificate, never the key.
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

from mpcagg.ops.pki import (
    Clock,
    KeyPair,
    create_ca,
    is_issued_by,
    issue_client_cert,
    issue_party_cert,
    load_key_pair,
    write_key_pair,
    write_private_pem,
    write_public_pem,
)
from mpcagg.protocol.identity import (
    ROLES,
    AuthContext,
    Identity,
    Role,
    certificate_identity,
    check_role,
    client_from_auth_context,
    client_uri,
    party_from_auth_context,
    party_uri,
    read_pem,
)
from mpcagg.protocol.spec import check_id

__all__ = [
    "ROLES",
    "AuthContext",
    "CertFiles",
    "Clock",
    "DevCredentials",
    "Identity",
    "KeyPair",
    "Role",
    "certificate_identity",
    "client_from_auth_context",
    "client_stem",
    "client_uri",
    "create_ca",
    "is_issued_by",
    "issue_client_cert",
    "issue_party_cert",
    "load_key_pair",
    "party_from_auth_context",
    "party_uri",
    "provision_client",
    "provision_dev",
    "read_pem",
    "write_key_pair",
    "write_private_pem",
    "write_public_pem",
]

_RENEW_BEFORE: Final = timedelta(days=1)
"""A reused certificate must stay valid at least this long, else it is reissued."""


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
    """Write (or reuse) a development CA, party certificates and client certificates.

    Files in ``directory`` (created 0700 if missing); private keys are mode 0600:
    ``ca.pem``, ``ca-key.pem``, ``party-<i>.pem``, ``party-<i>-key.pem``, the
    collector's ``collector.pem`` and ``collector-key.pem`` (named after
    :func:`client_stem`), ``trainer-<id>.pem`` and ``trainer-<id>-key.pem``.

    Idempotent: existing files are reused. A leaf certificate is reissued only if
    it no longer fits: not signed by the CA in ``directory``, expiring within a
    day, or missing one of ``hosts`` / its identity. Concurrent calls on the same
    directory are serialised by an ``flock`` on ``directory/.lock``.

    Raises:
        InvalidArgument: an invalid collector or trainer id.
        ValueError: ``n_parties < 1``, invalid hosts, or a CA that cannot be reused
            (half present, key mismatch, expired): the message says which, and
            deleting the directory starts afresh.
    """
    if isinstance(n_parties, bool) or not isinstance(n_parties, int) or n_parties < 1:
        raise ValueError(f"n_parties must be a positive integer, got {n_parties!r}")
    check_id("client id", collector_id)
    trainers = tuple(dict.fromkeys(check_id("client id", t) for t in trainer_ids))
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
        collector = _ensure_client(directory, "collector", collector_id, ca, clock)
        trainer_files = tuple(_ensure_client(directory, "trainer", t, ca, clock) for t in trainers)
    return DevCredentials(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        parties=parties,
        collector=collector,
        trainer_ids=trainers,
        trainers=trainer_files,
    )


def provision_client(
    directory: Path, client_id: str, role: str = "trainer", *, clock: Clock = time.time
) -> CertFiles:
    """Write (or reuse) the client certificate and key of one trainer or the collector.

    Issued by the CA in ``directory`` (which :func:`provision_dev` wrote), into
    ``<client_stem>.pem`` and ``<client_stem>-key.pem`` (0600) there; reused while it
    fits, as in :func:`provision_dev`. Cheaper than :func:`provision_dev`: the party
    certificates are not checked again.

    Raises:
        InvalidArgument: invalid client id or unknown role.
        ValueError: ``directory`` holds no usable CA.
    """
    check_id("client id", client_id)
    checked_role = check_role(role)
    directory = Path(directory)
    if not (directory / "ca.pem").is_file() or not (directory / "ca-key.pem").is_file():
        raise ValueError(f"{directory} holds no CA (ca.pem and ca-key.pem); provision it first")
    with _locked(directory):
        ca = _ensure_ca(directory, clock)
        return _ensure_client(directory, checked_role, client_id, ca, clock)


def client_stem(role: Role, client_id: str) -> str:
    """The file name stem of a client's certificate: ``trainer-<id>``, ``collector`` for the
    collector called "collector", else ``collector-<id>``."""
    if role == "collector" and client_id == "collector":
        return "collector"
    return f"{role}-{client_id}"


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
    directory: Path, role: Role, client_id: str, ca: KeyPair, clock: Clock
) -> CertFiles:
    stem = client_stem(role, client_id)
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
