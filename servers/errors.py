"""The one error tree of the service (mapped to gRPC status codes in servers/status.py)."""
from __future__ import annotations

class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

class Unauthenticated(ServiceError):
    """No valid credential was presented."""

class PermissionDenied(ServiceError):
    """The authenticated caller may not do this."""
