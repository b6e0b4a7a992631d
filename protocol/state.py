"""What both roles say about a round: its state, one party's status of it, and one
party's acknowledgement of one upload.

::

    OPEN ──manifest──▶ CLOSING ──commit(cohort)──▶ COMMITTED
      │                   │
      └──────fail─────────┴──────▶ FAILED

``UNKNOWN`` is never a party's state: it is what a client reports for a party it could
not reach, or for a state value it does not know.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mpcagg.protocol.spec import Holding, RoundSpec

LEADER = 0
"""The party that closes rounds: it gathers manifests and commits the cohort everywhere."""


class RoundState(enum.Enum):
    """A round's state at one party."""

    UNKNOWN = "UNKNOWN"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    COMMITTED = "COMMITTED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        """Whether the round has finished (committed or failed)."""
        return self in (RoundState.COMMITTED, RoundState.FAILED)


@dataclass(frozen=True, slots=True)
class RoundStatus:
    """One party's view of a round (GetRound, CreateRound, CloseRound, Commit, Fail)."""

    round_id: str
    party: int
    state: RoundState
    spec_digest: bytes = b""
    received: int = 0
    """Uploads this party durably holds."""
    cohort_size: int = 0
    """Set once COMMITTED."""
    cohort_digest: bytes = b""
    """Set once COMMITTED: :func:`mpcagg.protocol.spec.cohort_digest` of the cohort."""
    reason: str = ""
    """Why FAILED, or what CLOSING waits for."""
    spec: RoundSpec | None = field(default=None, repr=False, compare=False)
    """The round's whole spec (its digest is ``spec_digest``), where the party sent it."""


@dataclass(frozen=True, slots=True)
class UploadAck:
    """One party's acknowledgement that it durably holds one client's share."""

    round_id: str
    client_id: str
    party: int
    payload_digest: bytes
    duplicate: bool
    """An identical upload (same sharing, same bytes) had been acknowledged before."""
    sharing_id: bytes = b""


class ShareKind(enum.StrEnum):
    """What an upload carries: a 32-byte seed the party expands itself, or the full share."""

    SEED = "seed"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class UploadHeader:
    """The header of one upload, as a party receives it (validated by the party)."""

    round_id: str
    client_id: str
    sharing_id: bytes
    party: int
    kind: ShareKind
    length: int
    """Ring elements of the (expanded) share."""
    payload_digest: bytes
    seed: bytes = field(default=b"", repr=False)
    """``kind`` SEED only: the 32-byte seed."""
    spec_digest: bytes = b""
    """The round spec the trainer shared under; if set, a party holding another refuses."""
    seeds_acknowledged: bool = False
    """``kind`` FULL only: every seed of this sharing was acknowledged before the full share
    was sent, so the party folds it into its accumulator for good (it is not kept)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What one party holds for a closing round (its cohort once COMMITTED)."""

    round_id: str
    party: int
    held: tuple[Holding, ...]
    state: RoundState
    cohort_digest: bytes
    folded: tuple[Holding, ...] = ()
    """The held full shares this party folded into its accumulator and cannot take out
    again: a cohort must include every one of them (the leader fails the round otherwise)."""


@dataclass(frozen=True, slots=True)
class AggregateShare:
    """One party's aggregate share as received (header fields and the ring vector)."""

    party: int
    round_id: str
    cohort_size: int
    cohort_digest: bytes
    spec_digest: bytes
    vector: npt.NDArray[np.uint64] = field(repr=False)
