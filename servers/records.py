"""The durable records of one party's store (:mod:`servers.storage`): one row per round,
per acknowledged upload, and per open round's accumulator checkpoint.

These are plain frozen values: :class:`servers.storage.Storage` writes and reads them,
:class:`servers.round.Round` keeps each upload's :meth:`UploadRecord.metadata`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mpcagg.protocol.spec import Holding
from mpcagg.protocol.state import ShareKind


@dataclass(frozen=True, slots=True)
class RoundRow:
    """One round's row: its canonical spec and digest, state (a :class:`RoundState`
    value), reason, cohort and cohort digest (once decided or committed), creation time.
    """

    round_id: str
    spec: bytes
    spec_digest: bytes
    state: str
    reason: str
    cohort: tuple[Holding, ...] | None
    cohort_digest: bytes | None
    created_at: float


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """One acknowledged upload: its row in ``uploads`` and, without its seed
    (:meth:`metadata`), what a :class:`mpcagg.servers.round.Round` keeps in memory.

    ``kind`` is stored as its str value (``"seed"``/``"full"``).
    """

    round_id: str
    client_id: str
    sharing_id: bytes
    kind: ShareKind
    digest: bytes
    """The payload digest the trainer sent (:mod:`mpcagg.mpc.digest`)."""
    length: int
    """Ring elements of the shared vector (the round's length)."""
    nbytes: int
    """Share bytes received: 8 per element for a full share, 32 for a seed."""
    seed: bytes = field(default=b"", repr=False)
    """``kind`` SEED, until the round finishes or :meth:`metadata` drops it: the 32-byte seed."""
    folded: bool = False
    """``kind`` FULL: in the round's accumulator (checkpoint), not in a file of its own;
    it cannot be taken out again."""

    @property
    def holding(self) -> Holding:
        """The (client id, sharing id) pair this upload makes this party hold."""
        return Holding(self.client_id, self.sharing_id)

    def metadata(self) -> UploadRecord:
        """This record without its seed: what may stay in memory after the seed is erased."""
        return replace(self, seed=b"")


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """The durable checkpoint of an open round's accumulator: which slot file holds it,
    its generation (one per batch that folded shares) and its payload digest."""

    round_id: str
    slot: int
    generation: int
    digest: bytes
