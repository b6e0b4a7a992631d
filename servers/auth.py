"""Who is calling: client certificates (mutual TLS, client port) for trainers and the
collector, party certificates (mutual TLS, peer port) for servers.

A caller is whoever the certificate gRPC verified against the cluster CA names
(:mod:`servers.identity`); there is no other credential, so nothing a party receives
from a client can be replayed at another party. Without TLS (``--insecure``
development mode) every caller is allowed and :meth:`Authenticator.identify`
returns None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from mpcagg.protocol.errors import PermissionDenied, Unauthenticated
from mpcagg.protocol.identity import (
    Identity,
    Role,
    client_from_auth_context,
    party_from_auth_context,
)
from mpcagg.protocol.state import LEADER

Clock = Callable[[], float]
EXPECTED = (
    "expected a client certificate issued by the cluster CA naming "
    "mpcagg://trainer/<id> or mpcagg://collector/<id> (mutual TLS on the client port)"
)


class Authenticator:
    """Authenticates client-facing calls by client certificate; checks roles and client ids."""

    def __init__(self, enforcing: bool, clock: Clock = time.time) -> None:
        self.enforcing = enforcing
        self._clock = clock

    def identify(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity (None when not enforcing).

        Raises:
            Unauthenticated: no verified client certificate names a trainer or the
                collector (a party certificate is a server's, not a client's), or it
                expired while its connection stayed open.
        """
        if not self.enforcing:
            return None
        auth = _auth_context(context)
        ident = client_from_auth_context(auth)
        if ident is None:
            party = party_from_auth_context(auth)
            if party is not None:
                raise Unauthenticated(
                    f"party {party}'s certificate identifies a server, not a trainer or the "
                    f"collector: {EXPECTED}"
                )
            raise Unauthenticated(f"no trainer or collector identity: {EXPECTED}")
        now = self._clock()
        if now > ident.expires_at:
            raise Unauthenticated(
                f"the client certificate of {ident.client_id!r} expired at "
                f"{_utc(ident.expires_at)} (now {_utc(now)}); {EXPECTED}"
            )
        return ident

    def require(self, context: grpc.ServicerContext, *roles: Role) -> Identity | None:
        """The caller's identity if its role is one of ``roles``; else PermissionDenied."""
        ident = self.identify(context)
        if ident is not None and ident.role not in roles:
            raise PermissionDenied(
                f"this call needs role {' or '.join(roles)}; caller {ident.client_id!r} "
                f"has role {ident.role}"
            )
        return ident

    def require_client(self, context: grpc.ServicerContext, client_id: str) -> Identity | None:
        """A trainer whose certified id equals ``client_id``."""
        ident = self.require(context, "trainer")
        if ident is not None and ident.client_id != client_id:
            raise PermissionDenied(
                f"authenticated as {ident.client_id!r} but the request names client {client_id!r}"
            )
        return ident


class PeerAuthenticator:
    """Peer RPCs: the caller must present a verified party certificate of this cluster."""

    def __init__(self, n_parties: int, enforcing: bool) -> None:
        self.n_parties = n_parties
        self.enforcing = enforcing

    def require_party(self, context: grpc.ServicerContext) -> int | None:
        """The party index the caller's certificate names (``mpcagg://party/<i>``, i < n).

        None when not enforcing (``--insecure``). Raises :class:`PermissionDenied` for any
        other caller, trainers and collectors included.
        """
        if not self.enforcing:
            return None
        party = party_from_auth_context(_auth_context(context))
        if party is None or party >= self.n_parties:
            raise PermissionDenied(
                "peer calls need a party certificate of this cluster (mutual TLS); "
                "trainer and collector credentials are not accepted here"
            )
        return party

    def require_leader(self, context: grpc.ServicerContext) -> None:
        """Round coordination (manifests, commits, failures) comes only from party 0.

        Any other party holding a valid certificate may not close, commit or fail
        rounds on its peers: one compromised non-leader cannot steer another's cohort.
        """
        party = self.require_party(context)
        if party is not None and party != LEADER:
            raise PermissionDenied(
                f"peer calls come from the leader (party {LEADER}); party {party} may not make them"
            )


def _auth_context(context: grpc.ServicerContext) -> Any:
    try:
        return context.auth_context()
    except Exception:  # pragma: no cover - insecure transports
        return {}


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
