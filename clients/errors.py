"""The one error tree of the client package.

::

    ClientError
    ├── ConfigError          the cluster file or a client setting is unusable
    ├── InputError           the caller's tensors or round parameters are unusable
    │   ├── LayoutError      tensors do not match the layout (names, shapes, dtypes)
    │   └── UpdateConflict   another update for a round this trainer already shared
    ├── ProtocolError        servers disagree (spec or cohort digest) or answered malformed data
    ├── RoundStateError      the round is not in the state the request needs
    ├── UploadFailed         no server acknowledged an upload (``failures`` says why, per party)
    ├── CloseTimeout         a round did not finish closing within the caller's wait
    └── RpcFailed            a server answered with a gRPC error status
                             (``party``, ``method``, ``code``, ``server_message``)
        ├── InvalidInput         INVALID_ARGUMENT, OUT_OF_RANGE
        ├── RoundNotFound        NOT_FOUND
        ├── RoundRejected        FAILED_PRECONDITION (e.g. the round is not open, not committed);
        │                        also a RoundStateError
        ├── Conflict             ALREADY_EXISTS (another payload, another spec)
        ├── LimitExceeded        RESOURCE_EXHAUSTED
        ├── Unauthenticated      UNAUTHENTICATED
        ├── PermissionDenied     PERMISSION_DENIED
        ├── Unavailable          UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED (transient: retried)
        └── ServerError          any other status (INTERNAL, UNKNOWN, ...)

``clients.transport`` translates ``grpc.RpcError`` into :class:`RpcFailed` subclasses
in one place. No message carries share data, seeds or private keys.
"""

from __future__ import annotations

from collections.abc import Mapping


class ClientError(Exception):
    """Base of every error the client package raises on purpose."""


class ConfigError(ClientError, ValueError):
    """The cluster file or a client setting (client certificate, key, TLS files) is unusable."""


class InputError(ClientError, ValueError):
    """The caller's input is unusable; checked locally, nothing was sent."""


class UpdateConflict(InputError):
    """A different update for a round this trainer already shared (nothing was sent)."""


class LayoutError(InputError):
    """Tensors do not match the layout: missing or unexpected names, shapes, dtypes."""


class ProtocolError(ClientError):
    """Servers disagree with each other or with the client, or sent malformed data."""


class RoundStateError(ClientError):
    """The round is not in the state the request needs (e.g. uploads to a closed round)."""


class CloseTimeout(ClientError):
    """The round did not reach COMMITTED or FAILED within the caller's wait."""


class UploadFailed(ClientError):
    """No server acknowledged the upload; ``failures`` maps party index to reason."""

    def __init__(self, message: str, failures: Mapping[int, str]) -> None:
        super().__init__(message)
        self.failures = dict(failures)


class RpcFailed(ClientError):
    """A server answered a call with a gRPC error status.

    ``party`` is the server's party index, ``code`` the status code's name (e.g.
    ``"INVALID_ARGUMENT"``), ``server_message`` the server's own details, ``method``
    the RPC that failed. ``transient`` errors are worth retrying.
    """

    transient = False

    def __init__(self, party: int, method: str, code: str, server_message: str) -> None:
        self.party = party
        self.method = method
        self.code = code
        self.server_message = server_message
        detail = f": {server_message}" if server_message else ""
        super().__init__(f"party {party} refused {method} ({code}){detail}")


class InvalidInput(RpcFailed):
    """The server found the request malformed or not matching the round."""


class RoundNotFound(RpcFailed):
    """The server does not know the round."""


class RoundRejected(RpcFailed, RoundStateError):
    """A server said the round is not in the state the request needs."""


class Conflict(RpcFailed):
    """A conflicting duplicate: another payload for this client, another spec for this round."""


class LimitExceeded(RpcFailed):
    """A server-side limit would be exceeded."""


class Busy(LimitExceeded):
    """A server is at a capacity limit for now (e.g. concurrent uploads); retried."""

    transient = True


class Unauthenticated(RpcFailed):
    """The server did not accept the credential (or none was sent)."""


class PermissionDenied(RpcFailed):
    """The credential is valid but may not do this."""


class Unavailable(RpcFailed):
    """The server could not be reached, timed out or asked to retry."""

    transient = True


class ServerError(RpcFailed):
    """Any other failure status (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)."""


__all__ = [
    "Busy",
    "ClientError",
    "CloseTimeout",
    "ConfigError",
    "Conflict",
    "InputError",
    "InvalidInput",
    "LayoutError",
    "LimitExceeded",
    "PermissionDenied",
    "ProtocolError",
    "RoundNotFound",
    "RoundRejected",
    "RoundStateError",
    "RpcFailed",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "UploadFailed",
]
