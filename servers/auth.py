"""Who is calling: bearer tokens or client certificates for trainers and the
collector, party certificates (mutual TLS, peer port) for servers.

With no token verifier configured (``--insecure`` development mode) every caller
is allowed and :meth:`Authenticator.identify` returns None.
"""

from __future__ import annotations

from typing import Any

import grpc

from servers.errors import PermissionDenied, Unauthenticated
from servers.pki import client_from_auth_context, party_from_auth_context
from servers.tokens import Identity, Role, TokenVerifier

BEARER = "bearer "
LEADER = 0


class Authenticator:
    """Authenticates client-facing calls and checks roles and client ids."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier

    @property
    def enforcing(self) -> bool:
        return self._verifier is not None

    def identify(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity; raises :class:`Unauthenticated` if it has none."""
        if self._verifier is None:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                if not value.lower().startswith(BEARER):
                    raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
                return self._verifier.verify(value[len(BEARER) :].strip())
        ident = client_from_auth_context(_auth_context(context))
        if ident is not None:
            return ident
        raise Unauthenticated(
            "no credential: expected 'authorization: Bearer <token>' metadata "
            "or a client certificate issued by the cluster CA"
        )

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
        """A trainer whose authenticated id equals ``client_id``."""
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
