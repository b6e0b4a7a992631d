"""The one error tree of the service.

::

    ServiceError
    ├── ConfigError          the cluster file or a command-line setting is invalid
    ├── InvalidArgument      a request is malformed (wrong length, bad spec, bad seed size)
    ├── NotFound             unknown round
    ├── RoundNotOpen         the round is not in the state the request needs
    ├── AlreadyExists        a conflicting duplicate (round id, or (round, client) upload)
    ├── LimitExceeded        a configured limit would be exceeded
    │   └── Busy             ... one that frees up by itself (retry with back-off)
    ├── Unavailable          a peer could not be reached; retry later
    ├── Unauthenticated      no valid client certificate was presented
    └── PermissionDenied     the authenticated caller may not do this

:mod:`servers.status` maps each to a gRPC status code, in one table. Messages say
what was expected and what came, and never carry share data, seeds or private keys.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigError(ServiceError):
    """The cluster file or a setting is invalid."""


class InvalidArgument(ServiceError):
    """A request is malformed or does not match the round spec."""


class NotFound(ServiceError):
    """The named round does not exist on this server."""


class RoundNotOpen(ServiceError):
    """The round is not in the state this request needs (e.g. uploads after closing)."""


class AlreadyExists(ServiceError):
    """A conflicting duplicate: same round id with another spec, or another payload."""


class LimitExceeded(ServiceError):
    """A configured limit would be exceeded."""


class Busy(LimitExceeded):
    """A capacity limit (e.g. concurrent uploads) is reached for now; retrying later helps.

    Sent as RESOURCE_EXHAUSTED with the trailing metadata ``mpcagg-retryable: 1``."""


class Unavailable(ServiceError):
    """A peer could not be reached or is busy; the request may be retried."""


class Unauthenticated(ServiceError):
    """No verified client certificate names a trainer or the collector."""


class PermissionDenied(ServiceError):
    """The authenticated caller may not do this."""
