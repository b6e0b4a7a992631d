"""Versions a party announces and checks: the package, the wire protocol, the store.

- the **package** version (``mpcagg --version``, ``mpcagg health``, the first log line,
  the ``mpcagg_build_info`` metric);
- the **protocol** version the parties speak to each other: sent in the gRPC metadata
  of every peer call (:data:`PROTOCOL_HEADER`) and in the initial metadata of every peer
  and health reply; a party refuses a peer whose major version it does not speak;
- the **store schema** version lives with the store (:mod:`mpcagg.servers.schema`).
"""

from __future__ import annotations

from importlib import metadata
from typing import Final

PROTOCOL_VERSION: Final = 1
"""The peer protocol (``mpcagg.v1.Peer``): bump on any change a peer must understand."""

COMPATIBLE_PROTOCOLS: Final = frozenset({1})
"""Protocol versions this party accepts from a peer."""

PROTOCOL_HEADER: Final = "mpcagg-protocol"
VERSION_HEADER: Final = "mpcagg-version"


def package_version() -> str:
    """The installed mpcagg version (``0+unknown`` when run from a tree without metadata)."""
    try:
        return metadata.version("mpcagg")
    except metadata.PackageNotFoundError:  # pragma: no cover - always installed here
        return "0+unknown"


def version_metadata() -> tuple[tuple[str, str], ...]:
    """What a party sends with peer calls and replies."""
    return ((PROTOCOL_HEADER, str(PROTOCOL_VERSION)), (VERSION_HEADER, package_version()))


def incompatibility(announced: str | None, who: str) -> str | None:
    """Why ``who``, announcing protocol ``announced``, cannot be served; None if it can.

    A peer that announces nothing predates versioning and speaks protocol 1.
    """
    value = "1" if announced is None else announced
    if value.isdigit() and int(value) in COMPATIBLE_PROTOCOLS:
        return None
    return (
        f"{who} speaks mpcagg peer protocol {value[:16]!r}, this party speaks "
        f"{PROTOCOL_VERSION} (accepts {sorted(COMPATIBLE_PROTOCOLS)}): run versions of "
        "mpcagg that share a protocol on every party (see `mpcagg health`)"
    )
