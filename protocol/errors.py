"""The one error tree of mpcagg, raised by servers and clients alike.

::

    MpcaggError
    ├── ConfigError          the cluster file, a credential or a setting is unusable
    ├── InputError           the caller's tensors or round parameters are unusable (nothing sent)
    │   ├── LayoutError      tensors do not match the layout (names, shapes, dtypes)
    │   └── UpdateConflict   another update for a round this trainer already shared
    ├── ProtocolError        parties disagree (spec, cohort) or answered malformed data
    ├── RoundStateError      the round is not in the state the request needs
    ├── UploadFailed         no party acknowledged an upload (``failures`` says why, per party)
    ├── CloseTimeout         a round did not finish closing within the caller's wait
    └── ServiceError         a refusal that travels as a gRPC status (one per code below)
        ├── InvalidArgument      INVALID_ARGUMENT (and OUT_OF_RANGE, received)
        ├── NotFound             NOT_FOUND: unknown round
        ├── RoundNotOpen         FAILED_PRECONDITION: the round's state forbids it;
        │                        also a RoundStateError
        ├── AlreadyExists        ALREADY_EXISTS: another spec, another sharing or payload
        ├── LimitExceeded        RESOURCE_EXHAUSTED
        │   └── Busy             ... a capacity limit that frees up by itself (retried)
        ├── Unauthenticated      UNAUTHENTICATED
        ├── PermissionDenied     PERMISSION_DENIED
        ├── Unavailable          UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED (retried)
        └── ServerError          any other status (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)

A server raises a :class:`ServiceError` with its message; :mod:`mpcagg.wire.status`
turns it into a status code in one table, and turns a received status back into the
same class, now naming the ``party`` and ``method`` that refused. Messages say what
was expected and what came, and never carry share data, seeds or private keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class MpcaggError(Exception):
    """Base of every error mpcagg raises on purpose."""


class ConfigError(MpcaggError, ValueError):
    """The cluster file, a credential (certificate, key) or a setting is unusable."""


class InputError(MpcaggError, ValueError):
    """The caller's input is unusable; checked locally, nothing was sent."""


class LayoutError(InputError):
    """Tensors do not match the layout: missing or unexpected names, shapes, dtypes."""


class UpdateConflict(InputError):
    """A different update for a round this trainer already shared (nothing was sent)."""


class ProtocolError(MpcaggError):
    """Parties disagree with each other or with the caller, or sent malformed data."""


class RoundStateError(MpcaggError):
    """The round is not in the state the request needs (e.g. uploads to a closed round)."""


class CloseTimeout(MpcaggError):
    """The round did not reach COMMITTED or FAILED within the caller's wait."""


class UploadFailed(MpcaggError):
    """No party acknowledged the upload; ``failures`` maps party index to reason."""

    def __init__(self, message: str, failures: Mapping[int, str]) -> None:
        super().__init__(message)
        self.failures = dict(failures)


class ServiceError(MpcaggError):
    """A refusal that travels as a gRPC status.

    Raised by a server with just its message. Received by a client (or the leader from
    a peer), it also names the ``party`` that answered, the ``method`` called and the
    status ``code`` name that came (e.g. ``"DEADLINE_EXCEEDED"`` for an
    :class:`Unavailable`). ``server_message`` is the server's own text. ``transient``
    errors are worth retrying.
    """

    code: str = "UNKNOWN"
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        party: int | None = None,
        method: str | None = None,
        code: str | None = None,
    ) -> None:
        self.server_message = message
        self.party = party
        self.method = method
        if code is not None:
            self.code = code
        if party is None:
            super().__init__(message)
        else:
            detail = f": {message}" if message else ""
            super().__init__(f"party {party} refused {method} ({self.code}){detail}")


class InvalidArgument(ServiceError):
    """A request is malformed or does not match the round spec."""

    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """The named round does not exist on this party."""

    code = "NOT_FOUND"


class RoundNotOpen(ServiceError, RoundStateError):
    """The round is not in the state this request needs (e.g. uploads after closing)."""

    code = "FAILED_PRECONDITION"


class AlreadyExists(ServiceError):
    """A conflicting duplicate: a round id with another spec, another sharing or payload."""

    code = "ALREADY_EXISTS"


class LimitExceeded(ServiceError):
    """A configured limit would be exceeded."""

    code = "RESOURCE_EXHAUSTED"


class Busy(LimitExceeded):
    """A capacity limit (e.g. concurrent uploads) is reached for now; retrying later helps.

    Sent as RESOURCE_EXHAUSTED with the trailing metadata ``mpcagg-retryable: 1``."""

    transient = True


class Unauthenticated(ServiceError):
    """No verified client certificate names a trainer or the collector."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """The authenticated caller may not do this."""

    code = "PERMISSION_DENIED"


class Unavailable(ServiceError):
    """A party could not be reached, timed out or asked to retry."""

    code = "UNAVAILABLE"
    transient = True


class ServerError(ServiceError):
    """Any other failure status (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)."""

    code = "INTERNAL"


__all__ = [
    "AlreadyExists",
    "Busy",
    "CloseTimeout",
    "ConfigError",
    "InputError",
    "InvalidArgument",
    "LayoutError",
    "LimitExceeded",
    "MpcaggError",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "RoundNotOpen",
    "RoundStateError",
    "ServerError",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "UpdateConflict",
    "UploadFailed",
]
