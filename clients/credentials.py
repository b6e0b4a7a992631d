"""A trainer's or the collector's client certificate and key, for mutual TLS.

On a TLS cluster every party's client port requires a client certificate issued by the
cluster CA (``mpcagg certs client``); its URI SAN ``mpcagg://<role>/<id>`` is who the
client is. The key never leaves the client: a party sees only the certificate, which is
useless without the key, so nothing a party receives can be replayed at another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mpcagg.protocol.errors import ConfigError, InputError, InvalidArgument
from mpcagg.protocol.identity import Identity, certificate_identity
from mpcagg.protocol.spec import check_id

PathLike = str | Path


@dataclass(frozen=True, eq=False)
class ClientCredentials:
    """A PEM client certificate (chain) and its PEM private key; not printable, not picklable.

    Raises:
        ConfigError: the certificate or key does not parse, the key is not the
            certificate's, or the certificate names no trainer or collector.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.cert_pem, bytes) or not isinstance(self.key_pem, bytes):
            raise ConfigError("client certificate and key must be PEM bytes")
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError:
            raise ConfigError("the client certificate is not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError):
            raise ConfigError("the client key is not an unencrypted PEM private key") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
            raise ConfigError("the client key is not the private key of the client certificate")
        if self.identity is None:
            raise ConfigError(
                f"the client certificate ({cert.subject.rfc4514_string()}) names no trainer or "
                "collector: expected one URI SAN mpcagg://trainer/<id> or "
                "mpcagg://collector/<id> and CN <id> (see `mpcagg certs client`)"
            )

    @classmethod
    def from_files(cls, cert: PathLike, key: PathLike) -> ClientCredentials:
        """Load a certificate and its key from PEM files. Raises :class:`ConfigError`."""
        return cls(read_file(cert, "client certificate"), read_file(key, "client key"))

    @property
    def identity(self) -> Identity | None:
        """The trainer or collector the certificate names (not checked against any CA)."""
        return certificate_identity(self.cert_pem)

    def __repr__(self) -> str:
        ident = self.identity
        who = f"{ident.role} {ident.client_id!r}" if ident is not None else "?"
        return f"ClientCredentials({who}, key=<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("client credentials hold a private key and refuse to be pickled")


def client_credentials(
    cert: ClientCredentials | PathLike | None, key: PathLike | None
) -> ClientCredentials | None:
    """``cert``/``key`` as given to a client constructor: a :class:`ClientCredentials`
    (and no key), two PEM file paths, or neither. Raises :class:`ConfigError`."""
    if isinstance(cert, ClientCredentials):
        if key is not None:
            raise ConfigError("key= goes with a certificate path, not with ClientCredentials")
        return cert
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("a client certificate needs both cert= and key= (PEM file paths)")
    return ClientCredentials.from_files(cert, key)


def resolve_client_id(
    given: str | None, credentials: ClientCredentials | None, default: str | None = None
) -> str:
    """The client id: ``given``, else the certificate's, else ``default``.

    Raises:
        InputError: ``given`` is not a valid id, differs from the id the certificate
            names, or there is no id at all.
    """
    if given is not None:
        try:
            check_id("client id", given)
        except InvalidArgument as exc:
            raise InputError(str(exc)) from None
    ident = credentials.identity if credentials is not None else None
    if ident is not None:
        if given is not None and given != ident.client_id:
            raise InputError(
                f"client id {given!r} does not match the client certificate, which names "
                f"{ident.role} {ident.client_id!r}"
            )
        return ident.client_id
    if given is not None:
        return given
    if default is not None:
        return default
    raise InputError("a client id is needed when no client certificate names one")


def read_file(path: PathLike, what: str) -> bytes:
    """The bytes of ``path``; :class:`ConfigError` naming ``what`` if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
