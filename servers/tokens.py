"""Signed bearer tokens for trainers and the collector.

A token is ``base64url(payload) "." base64url(signature)`` (unpadded base64url,
as in JWS compact serialization, RFC 7515 §7.1), where ``payload`` is compact
JSON ``{"v": 1, "sub", "role", "cluster", "iat", "exp"}`` and ``signature`` is
Ed25519 (RFC 8032) over the payload bytes exactly as sent. There is no header
and no algorithm negotiation: the algorithm is fixed, so there is nothing to
downgrade.

Pure: no files, no sockets; time comes from an injected clock.
Every failure to verify raises :class:`servers.errors.Unauthenticated` with a
message that names what was wrong but never echoes the token or key material.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeGuard, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from servers.errors import Unauthenticated

Clock = Callable[[], float]
"""Seconds since the epoch; ``time.time`` in production, a fake in tests."""

Role = Literal["trainer", "collector"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

TOKEN_VERSION: Final = 1
MAX_TOKEN_CHARS: Final = 4096
_SIGNATURE_BYTES: Final = 64
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def is_role(value: object) -> TypeGuard[Role]:
    """Whether ``value`` is one of :data:`ROLES`."""
    return isinstance(value, str) and value in ROLES


def check_client_id(client_id: str) -> str:
    """Return ``client_id`` if it is 1–128 of ``[A-Za-z0-9._-]`` starting with a letter or digit.

    Client ids end up in file names, URIs (``mpcagg://trainer/<id>``) and log
    lines, so they are restricted to characters that are safe in all three.

    Raises:
        ValueError: naming the rule that was broken.
    """
    if not isinstance(client_id, str) or _CLIENT_ID.fullmatch(client_id) is None:
        raise ValueError(
            f"client id {_quote(client_id)} is not 1-128 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit"
        )
    return client_id


def check_role(role: str) -> Role:
    """Return ``role`` narrowed to :data:`Role`; ``ValueError`` if it is not one."""
    if not is_role(role):
        raise ValueError(f"unknown role {_quote(role)} (expected one of {', '.join(ROLES)})")
    return role


@dataclass(frozen=True)
class Identity:
    """Who an authenticated client is, and until when the credential holds."""

    client_id: str
    role: Role
    expires_at: float
    """Seconds since the epoch after which the credential is no longer valid."""


class TokenIssuer:
    """Mints tokens with an Ed25519 signing key (held by the operator or the dev tooling)."""

    __slots__ = ("_clock", "_key")

    def __init__(self, signing_key: Ed25519PrivateKey, clock: Clock = time.time) -> None:
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError(
                f"signing key must be an Ed25519PrivateKey, got {type(signing_key).__name__}"
            )
        self._key = signing_key
        self._clock = clock

    def __repr__(self) -> str:
        return "TokenIssuer(signing_key=<redacted>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("TokenIssuer holds a private key and is not picklable")

    def issue(self, client_id: str, role: str, ttl_s: float, cluster: str) -> str:
        """A token for ``client_id`` acting as ``role`` in ``cluster``, valid for ``ttl_s`` seconds.

        ``iat`` is the clock's time rounded down and ``exp`` is ``iat + ttl_s``
        rounded up, both whole seconds.

        Raises:
            ValueError: bad client id, unknown role, empty cluster, or a ttl that is
                not a positive finite number.
        """
        check_client_id(client_id)
        checked_role = check_role(role)
        if not isinstance(cluster, str) or not cluster:
            raise ValueError("cluster name must be a non-empty string")
        if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"token ttl must be a positive number of seconds, got {ttl_s!r}")
        now = self._clock()
        iat = math.floor(now)
        payload = {
            "v": TOKEN_VERSION,
            "sub": client_id,
            "role": checked_role,
            "cluster": cluster,
            "iat": iat,
            "exp": math.ceil(now + ttl_s),
        }
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64encode(body)}.{_b64encode(self._key.sign(body))}"


class TokenVerifier:
    """Checks tokens against the cluster's token public key (held by every server)."""

    __slots__ = ("_clock", "_cluster", "_key", "_leeway_s")

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        cluster: str,
        leeway_s: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError(
                f"public key must be an Ed25519PublicKey, got {type(public_key).__name__}"
            )
        if not isinstance(cluster, str) or not cluster:
            raise ValueError("cluster name must be a non-empty string")
        if not (math.isfinite(leeway_s) and leeway_s >= 0):
            raise ValueError(f"leeway must be a non-negative number of seconds, got {leeway_s!r}")
        self._key = public_key
        self._cluster = cluster
        self._leeway_s = float(leeway_s)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenVerifier(cluster={self._cluster!r}, leeway_s={self._leeway_s})"

    def verify(self, token: str) -> Identity:
        """The identity a valid token carries.

        Valid means: well formed, signed by this verifier's key, version 1, a known
        role, this verifier's cluster, ``iat - leeway <= now <= exp + leeway``.

        Raises:
            Unauthenticated: saying which of those checks failed.
        """
        body = self._authentic_body(token)
        claims = _parse_claims(body)
        if claims.cluster != self._cluster:
            raise Unauthenticated(
                f"token is for the wrong cluster {_quote(claims.cluster)} "
                f"(expected {_quote(self._cluster)})"
            )
        now = self._clock()
        if now > claims.exp + self._leeway_s:
            raise Unauthenticated(
                f"token expired at {_utc(claims.exp)} (now {_utc(now)}, "
                f"leeway {self._leeway_s:g} s)"
            )
        if now < claims.iat - self._leeway_s:
            raise Unauthenticated(
                f"token issued in the future at {_utc(claims.iat)} (now {_utc(now)}, "
                f"leeway {self._leeway_s:g} s)"
            )
        return Identity(client_id=claims.sub, role=claims.role, expires_at=claims.exp)

    def _authentic_body(self, token: str) -> bytes:
        if not isinstance(token, str):
            raise Unauthenticated(f"malformed token: expected a string, got {type(token).__name__}")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(
                f"malformed token: {len(token)} characters, at most {MAX_TOKEN_CHARS} allowed"
            )
        parts = token.split(".")
        if len(parts) != 2:
            raise Unauthenticated(
                f"malformed token: expected 2 dot-separated parts, got {len(parts)}"
            )
        body = _b64decode(parts[0], "payload")
        signature = _b64decode(parts[1], "signature")
        if len(signature) != _SIGNATURE_BYTES:
            raise Unauthenticated(
                f"malformed token: signature is {len(signature)} bytes, expected {_SIGNATURE_BYTES}"
            )
        try:
            self._key.verify(signature, body)
        except InvalidSignature:
            raise Unauthenticated(
                "bad token signature (not signed by this cluster's token key, or altered)"
            ) from None
        return body


@dataclass(frozen=True)
class _Claims:
    sub: str
    role: Role
    cluster: str
    iat: float
    exp: float


def _parse_claims(body: bytes) -> _Claims:
    """Claims of a payload whose signature has already been checked."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Unauthenticated("malformed token: payload is not JSON") from None
    if not isinstance(payload, dict):
        raise Unauthenticated("malformed token: payload is not a JSON object")
    version = payload.get("v")
    if type(version) is not int or version != TOKEN_VERSION:
        raise Unauthenticated(
            f"unsupported token version {_quote(version)} (expected {TOKEN_VERSION})"
        )
    sub, role, cluster = payload.get("sub"), payload.get("role"), payload.get("cluster")
    if not isinstance(sub, str) or _CLIENT_ID.fullmatch(sub) is None:
        raise Unauthenticated("malformed token: missing or invalid subject")
    if not is_role(role):
        raise Unauthenticated(f"unknown role {_quote(role)} (expected one of {', '.join(ROLES)})")
    if not isinstance(cluster, str):
        raise Unauthenticated("malformed token: missing cluster")
    return _Claims(sub, role, cluster, _time_claim(payload, "iat"), _time_claim(payload, "exp"))


def _time_claim(payload: dict[str, object], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
    raise Unauthenticated(f"malformed token: missing or invalid {name!r}")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Strict unpadded base64url: only the URL-safe alphabet, canonical trailing bits."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise Unauthenticated(f"malformed token: {what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Unauthenticated(f"malformed token: {what} is not unpadded base64url") from None
    if _b64encode(data) != text:
        raise Unauthenticated(f"malformed token: {what} is not canonical base64url")
    return data


def _quote(value: object, limit: int = 64) -> str:
    """A short, escaped rendering of a claim or argument for an error message."""
    text = json.dumps(value, ensure_ascii=True) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utc(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f} s since the epoch"
