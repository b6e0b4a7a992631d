"""What the parties agree on to open an aggregate among themselves (reveal mode ``servers``).

The group of a round is its n parties, rank = party index. A party process draws a
fresh 16-byte **incarnation** when it starts; a group is formed once every party has
delivered a :class:`Hello` for the round to every other (the acknowledgement names the
recipient's incarnation), and is named by :func:`group_id` over the round, its
:func:`binding` and every member's incarnation. A member that restarts has a new
incarnation, so messages of the broken group never count in the new one.

Pure: no gRPC (``wire/group.py`` converts), no clock, no files.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mpcagg.protocol.errors import InvalidArgument
from mpcagg.protocol.spec import check_id

INCARNATION_BYTES = 16
GROUP_ID_BYTES = 16
BINDING_BYTES = 32
MAX_MESSAGES = 16
"""Message numbers a group may use per ordered pair (a reveal and its check use 2). A
party holds at most this many messages per round and sender, each at most the round's
length: what another party can make it hold."""

_BINDING_TAG = b"mpcagg/v1/group-binding\x00"
_GROUP_TAG = b"mpcagg/v1/group-id\x00"


def binding(spec_digest: bytes, cohort_digest: bytes) -> bytes:
    """The 32 bytes that tie a group to one committed aggregate: SHA-256 over a tag, the
    round's spec digest and its cohort digest. Parties that committed different
    cohorts (which the leader never decides) cannot form a group."""
    return hashlib.sha256(_BINDING_TAG + spec_digest + cohort_digest).digest()


def group_id(session: str, bound: bytes, incarnations: Sequence[bytes]) -> bytes:
    """The name of one formed group: SHA-256 over a tag, the round id, its binding and
    every member's incarnation in rank order, cut to 16 bytes."""
    h = hashlib.sha256(_GROUP_TAG + session.encode() + b"\x00" + bound)
    for inc in incarnations:
        h.update(inc)
    return h.digest()[:GROUP_ID_BYTES]


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise InvalidArgument(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Hello:
    """Party ``src`` (incarnation ``incarnation``) takes part in opening ``session``."""

    session: str
    binding: bytes
    src: int
    dst: int
    incarnation: bytes

    def __post_init__(self) -> None:
        check_id("session", self.session)
        _check_bytes("binding", self.binding, BINDING_BYTES)
        _check_bytes("incarnation", self.incarnation, INCARNATION_BYTES)
        if self.src == self.dst:
            raise InvalidArgument(f"a hello goes to another party, not from {self.src} to itself")


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """The header of message ``seq`` from ``src`` to ``dst`` in group ``group``."""

    session: str
    binding: bytes
    src: int
    dst: int
    incarnation: bytes
    group: bytes
    seq: int
    length: int

    def __post_init__(self) -> None:
        check_id("session", self.session)
        _check_bytes("binding", self.binding, BINDING_BYTES)
        _check_bytes("incarnation", self.incarnation, INCARNATION_BYTES)
        _check_bytes("group id", self.group, GROUP_ID_BYTES)
        if self.src == self.dst:
            raise InvalidArgument(f"a message goes to another party, not from {self.src} to itself")
        if not 0 <= self.seq < MAX_MESSAGES:
            raise InvalidArgument(f"message number {self.seq} is not in 0..{MAX_MESSAGES - 1}")
        if self.length < 0:
            raise InvalidArgument(f"message length must be >= 0, got {self.length}")


class RevealState(enum.Enum):
    """How a party's reveal of one round stands."""

    PENDING = "pending"
    REVEALED = "revealed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    """A state this client cannot read (a newer server)."""


@dataclass(frozen=True, slots=True)
class RevealStatus:
    """One party's reveal of one round: never the sum itself."""

    round_id: str
    party: int
    state: RevealState
    reason: str = ""
    cohort_size: int = 0
    cohort_digest: bytes = b""
    spec_digest: bytes = b""


@dataclass(frozen=True, slots=True)
class RevealedSum:
    """The sum one party revealed, as it serves it (ring elements, fixed point)."""

    party: int
    round_id: str
    cohort_size: int
    cohort_digest: bytes
    spec_digest: bytes
    vector: npt.NDArray[np.uint64] = field(repr=False)
