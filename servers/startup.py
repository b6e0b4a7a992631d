"""Start-up checks of one party, each failing with one line that names the file or the
address and says what to do (:class:`ConfigError`), before anything is served.

- :func:`check_party_credentials`: the certificate is readable, issued by the cluster
  CA, still valid, names *this* party (``mpcagg://party/<i>``, CN ``party-<i>``), and the
  key is its key; a warning if it does not name the host the party advertises.
- :func:`check_bindable` / :func:`bind`: an address that is in use, not on this host or
  not resolvable is refused by name (gRPC itself says only "Failed to bind").
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.identity import party_from_auth_context, party_uri

log = logging.getLogger("mpcagg.server")


def _read(path: Path, what: str, party: int) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror}; fix `{_key_of(what)}` for party "
            f"{party} in the cluster file"
        ) from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path} holds no PEM block; give the PEM file")
    return data


def _key_of(what: str) -> str:
    return {"certificate": "cert", "private key": "key", "cluster CA": "[tls] ca"}.get(what, what)


def certificate_party(cert: x509.Certificate) -> int | None:
    """The party a certificate names, by the very rule that identifies a party's TLS
    peer (:func:`mpcagg.protocol.identity.party_from_auth_context`); None if none."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u.encode() for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    names = [
        v.encode() if isinstance(v, str) else bytes(v)
        for v in (a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    ]
    context = {"transport_security_type": [b"ssl"], "x509_common_name": names, "peer_uri": uris}
    return party_from_auth_context(context)


def check_party_credentials(
    cluster: ClusterConfig, party: int, clock: Callable[[], float] = time.time
) -> None:
    """Refuse to start with credentials that cannot work (see the module docstring)."""
    tls = cluster.tls
    me = cluster.party(party)
    if tls is None or me.cert is None or me.key is None:
        return
    ca_pem = _read(tls.ca, "cluster CA", party)
    cert_pem = _read(me.cert, "certificate", party)
    key_pem = _read(me.key, "private key", party)
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise ConfigError(f"cluster CA {tls.ca} is not a PEM certificate") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"certificate {me.cert} is not a PEM certificate") from None
    named = certificate_party(cert)
    fix = f"issue one with `mpcagg certs party --party {party} --host <this host>`"
    if named is None:
        raise ConfigError(
            f"certificate {me.cert} names no party (expected URI SAN {party_uri(party)} and "
            f"CN party-{party}): {fix}"
        )
    if named != party:
        raise ConfigError(
            f"certificate {me.cert} is party {named}'s, not party {party}'s: give party "
            f"{party} its own certificate ({fix}), or start this server with --party {named}"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"private key {me.key} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigError(
            f"private key {me.key} is not the key of certificate {me.cert}: give the key "
            f"written with that certificate (party-{party}-key.pem), or {fix}"
        )
    if not any(_issued_by(cert, ca) for ca in cas):
        raise ConfigError(
            f"certificate {me.cert} is not issued by the cluster CA {tls.ca}: every party, "
            f"trainer and the collector must use certificates of one CA; {fix}"
        )
    now = datetime.fromtimestamp(clock(), UTC)
    if now > cert.not_valid_after_utc:
        raise ConfigError(
            f"certificate {me.cert} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; {fix}"
        )
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"certificate {me.cert} is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check this host's clock"
        )
    for address in (me.address, me.peer_address):
        host = (address or "").rpartition(":")[0].strip("[]")
        if host and not _names_host(cert, host):
            log.warning(
                "certificate %s does not name %s, the host party %d advertises: trainers and "
                "parties dialling %s will refuse it (reissue it with --host %s)",
                me.cert,
                host,
                party,
                address,
                host,
            )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        names = [n.lower() for n in sans.get_values_for_type(x509.DNSName)]
        host = host.lower()
        return host in names or any(
            n.startswith("*.") and host.partition(".")[2] == n[2:] for n in names
        )
    return ip in sans.get_values_for_type(x509.IPAddress)


def check_bindable(address: str, what: str) -> None:
    """Refuse an address gRPC would fail to bind, saying why (port 0 is always fine)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    hint = f"set {what} in the cluster file to an address of this host"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as gai:
        raise ConfigError(f"cannot listen on {address} ({what}): {gai.strerror}; {hint}") from None
    problems: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
                return
            except OSError as error:
                problems.append(error)
    first = problems[0]
    if first.errno == errno.EADDRINUSE:
        raise ConfigError(
            f"cannot listen on {address} ({what}): the port is in use; stop what holds it "
            f"(another mpcagg server?) or choose another port"
        )
    if first.errno == errno.EADDRNOTAVAIL:
        raise ConfigError(
            f"cannot listen on {address} ({what}): it is not an address of this host; {hint} "
            "(e.g. 0.0.0.0:PORT) and keep the advertised one in address / peer_address"
        )
    raise ConfigError(f"cannot listen on {address} ({what}): {first.strerror}; {hint}")


def bind(
    server: grpc.Server,
    address: str,
    what: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Bind ``address`` on ``server``; the bound port. Raises :class:`ConfigError`."""
    check_bindable(address, what)
    port: int
    try:
        if credentials is None:
            port = int(server.add_insecure_port(address))
        else:
            port = int(server.add_secure_port(address, credentials))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {address} ({what}); {what} must name this host")
    return port
