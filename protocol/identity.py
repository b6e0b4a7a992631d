"""Who is calling, as a verified TLS certificate names it: a party, a trainer or the collector.

A party certificate carries the URI SAN ``mpcagg://party/<i>`` and CN ``party-<i>``; a
client certificate (:func:`servers.pki.issue_client_cert`) carries exactly one URI SAN
``mpcagg://<role>/<client_id>`` and CN ``<client_id>``. A server reads the identity back
from the certificate gRPC verified on the mutual-TLS connection
(:func:`party_from_auth_context`, :func:`client_from_auth_context`). Nothing else
identifies a caller: what one party receives from a trainer or the collector (a public
certificate, requests) cannot be replayed at another party, which would take the
client's private key.

gRPC Python caveat (grpc 1.85, ``grpc/_cython/_cygrpc/credentials.pyx.pxi``):
``grpc.ssl_server_credentials(require_client_auth=False)`` maps to
``GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE``, so the server never asks for a client
certificate and the auth context carries no ``x509_*`` keys even when the client
has one. ``require_client_auth=True`` maps to ``REQUEST_AND_REQUIRE_..._AND_VERIFY``.
Python exposes nothing in between, so a port that must recognise its callers by their
certificate has to require client certificates: with TLS on, both of a server's ports
do (parties on the peer port, trainers and the collector on the client port).

Pure: no files, no sockets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeGuard, get_args

from cryptography import x509
from cryptography.x509.oid import NameOID

from mpcagg.protocol.errors import InvalidArgument
from mpcagg.protocol.spec import check_id

Role = Literal["trainer", "collector"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
PARTY_URI_PREFIX: Final = "mpcagg://party/"
CLIENT_URI_PREFIX: Final = "mpcagg://"
MAX_PARTY: Final = 1 << 16


def is_role(value: object) -> TypeGuard[Role]:
    """Whether ``value`` is one of :data:`ROLES`."""
    return isinstance(value, str) and value in ROLES


def check_role(role: str) -> Role:
    """``role`` narrowed to :data:`Role`.

    Raises:
        InvalidArgument: ``role`` is not one of :data:`ROLES`.
    """
    if not is_role(role):
        shown = role if isinstance(role, str) and len(role) <= 40 else f"{str(role)[:40]}…"
        raise InvalidArgument(f"unknown role {shown!r} (expected one of {', '.join(ROLES)})")
    return role


@dataclass(frozen=True)
class Identity:
    """Who an authenticated client is, and until when its certificate holds."""

    client_id: str
    role: Role
    expires_at: float
    """Seconds since the epoch after which the certificate is no longer valid."""


def party_uri(party: int) -> str:
    """The URI SAN a party certificate carries: ``mpcagg://party/<party>`` (what
    :func:`party_from_auth_context` accepts back; it checks nothing itself)."""
    return f"{PARTY_URI_PREFIX}{party}"


def client_uri(role: Role, client_id: str) -> str:
    """The one URI SAN a client certificate carries: ``mpcagg://<role>/<client_id>`` (what
    :func:`client_from_auth_context` reads back; the caller validates ``client_id``)."""
    return f"{CLIENT_URI_PREFIX}{role}/{client_id}"


AuthContext = Mapping[str, Iterable[bytes]] | Mapping[bytes, Iterable[bytes]]
"""``grpc.ServicerContext.auth_context()``: observed with ``str`` keys such as
``"x509_common_name"``, ``"x509_subject_alternative_name"``, ``"peer_uri"`` and
``"transport_security_type"``, each mapping to a list of ``bytes``; ``bytes`` keys
are accepted as well."""


def party_from_auth_context(auth_context: AuthContext) -> int | None:
    """The party index of a TLS peer that presented a verified party certificate, else None.

    The peer counts as party ``i`` only if the transport is TLS, its certificate
    carries exactly one ``mpcagg://party/<i>`` URI SAN and its CN is ``party-<i>``.
    gRPC only fills the ``x509_*`` entries after verifying the chain against the
    server's root certificates, which (see the module note) happens only on a port
    created with ``require_client_auth=True``; elsewhere this returns None.
    """
    entries = _entries(auth_context)
    if entries.get("transport_security_type") != [b"ssl"]:
        return None
    uris = {uri for uri in _uris(entries) if uri.startswith(PARTY_URI_PREFIX.encode())}
    if len(uris) != 1:
        return None
    digits = uris.pop()[len(PARTY_URI_PREFIX) :]
    if not digits.isdigit() or not digits.isascii() or (digits.startswith(b"0") and digits != b"0"):
        return None
    party = int(digits)
    if party >= MAX_PARTY or entries.get("x509_common_name") != [f"party-{party}".encode()]:
        return None
    return party


def client_from_auth_context(auth_context: AuthContext) -> Identity | None:
    """The trainer or collector identity of a peer with a verified client certificate.

    Same trust argument as :func:`party_from_auth_context`: exactly one
    ``mpcagg://<role>/<id>`` URI SAN and CN ``<id>``. ``expires_at`` is the
    certificate's notAfter when gRPC passes the PEM certificate, else infinity.
    """
    entries = _entries(auth_context)
    if entries.get("transport_security_type") != [b"ssl"]:
        return None
    found = _client_named(_uris(entries), entries.get("x509_common_name", []))
    if found is None:
        return None
    expires_at = float("inf")
    pem = entries.get("x509_pem_cert")
    if pem:
        with contextlib.suppress(ValueError):
            expires_at = x509.load_pem_x509_certificate(pem[0]).not_valid_after_utc.timestamp()
    return Identity(client_id=found[1], role=found[0], expires_at=expires_at)


def certificate_identity(cert_pem: bytes) -> Identity | None:
    """The trainer or collector a PEM certificate names, by the rules of
    :func:`client_from_auth_context`; None if it names none. Who issued it is not checked
    (a client reads its own certificate; servers trust only what TLS verified).

    Raises:
        ValueError: ``cert_pem`` holds no PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [uri.encode() for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    names = [
        value.encode() if isinstance(value, str) else bytes(value)
        for value in (a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    ]
    found = _client_named(uris, names)
    if found is None:
        return None
    expires_at = cert.not_valid_after_utc.timestamp()
    return Identity(client_id=found[1], role=found[0], expires_at=expires_at)


def _client_named(uris: Iterable[bytes], common_names: list[bytes]) -> tuple[Role, str] | None:
    """(role, id) if exactly one ``mpcagg://<role>/<id>`` URI names a valid id that is the CN."""
    found: set[tuple[Role, str]] = set()
    for uri in uris:
        text = uri.decode("ascii", "replace")
        if not text.startswith(CLIENT_URI_PREFIX):
            continue
        role, _, client_id = text[len(CLIENT_URI_PREFIX) :].partition("/")
        if is_role(role):
            found.add((role, client_id))
    if len(found) != 1:
        return None
    role, client_id = found.pop()
    try:
        check_id("client id", client_id)
    except InvalidArgument:
        return None
    if common_names != [client_id.encode()]:
        return None
    return role, client_id


def _entries(auth_context: AuthContext) -> dict[str, list[bytes]]:
    return {
        (key.decode("ascii", "replace") if isinstance(key, bytes) else key): list(values)
        for key, values in auth_context.items()
    }


def _uris(entries: Mapping[str, list[bytes]]) -> set[bytes]:
    """URI SANs: grpc lists them under ``peer_uri`` and, mixed with DNS/IP, under the SAN key."""
    candidates = [*entries.get("peer_uri", []), *entries.get("x509_subject_alternative_name", [])]
    return {value for value in candidates if b"://" in value}


def read_pem(path: Path | str) -> bytes:
    """The bytes of a PEM file; ``ValueError`` naming the file if it holds no PEM block."""
    data = Path(path).read_bytes()
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path} does not contain a PEM block")
    return data
