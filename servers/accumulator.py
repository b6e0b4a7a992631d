"""One open round's accumulator on one party, and the group commit that makes uploads durable.

The accumulator holds the sum of the **folded** full shares: those a trainer sent after
every seed of its sharing was acknowledged (``seeds_acknowledged``), so every party
holds that sharing and the share can never have to be taken out again. Seeds are not
folded here: each is 32 bytes in its database row, and only the cohort's seeds are
expanded, once, when the round commits (:meth:`RoundAccumulator.aggregate`). A full
share sent before its seeds were all acknowledged is kept apart in a file of its own
and added at commit only if its sharing is in the cohort.

Durability is by **group commit**. An upload that finishes folds its share (if it has
one to fold) and queues its row; the first upload to find no batch being written writes
one for everything queued: the accumulator into the checkpoint slot that is not current
(``fdatasync``), then one SQLite transaction with the batch's rows and the new current
slot. Every upload of the batch is acknowledged after that transaction, so an
acknowledgement waits for exactly one checkpoint that includes it; uploads that finish
while a batch is being written form the next one. Memory and disk stay O(d) whatever
the number of uploads: one vector in memory, two checkpoint slots on disk.

Recovery (:meth:`RoundAccumulator.recover`) loads the current slot; the rows say which
sharings it contains, so nothing acknowledged is lost and nothing is counted twice.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from mpcagg.mpc import FullShare, Seed, SeedShare, Share, SharingContext
from mpcagg.mpc.digest import payload_digest
from mpcagg.mpc.engines import Engine
from mpcagg.mpc.ring import DTYPE, RingVector
from mpcagg.protocol.errors import Unavailable
from mpcagg.protocol.spec import Holding, RoundSpec
from mpcagg.protocol.state import ShareKind
from mpcagg.servers.records import CheckpointRow, UploadRecord
from mpcagg.servers.spool import aligned_zeros, read_vector, write_vector
from mpcagg.servers.storage import Storage

log = logging.getLogger("mpcagg.accumulator")

Fold = Callable[[RingVector], None]
"""Adds one upload's full share into the accumulator vector, in place."""


@dataclass(eq=False)
class _Entry:
    row: UploadRecord
    done: bool = False
    error: BaseException | None = field(default=None)


class RoundAccumulator:
    """The folded full shares of one OPEN or CLOSING round and its checkpoints.
    Thread-safe; :meth:`submit` is called by every finishing upload."""

    def __init__(
        self,
        storage: Storage,
        spec: RoundSpec,
        vector: RingVector | None = None,
        checkpoint: CheckpointRow | None = None,
    ) -> None:
        self._storage = storage
        self._spec = spec
        self.vector: RingVector = vector if vector is not None else aligned_zeros(spec.length)
        self._checkpoint = checkpoint
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._writing = False
        self.checkpoints_written = 0

    @property
    def round_id(self) -> str:
        """The round this accumulator belongs to."""
        return self._spec.round_id

    # --- recovery ------------------------------------------------------------------------

    @classmethod
    def recover(
        cls, storage: Storage, spec: RoundSpec
    ) -> tuple[RoundAccumulator, list[UploadRecord]]:
        """The round's accumulator as last checkpointed, and its acknowledged uploads.

        Raises :class:`ValueError` if the current checkpoint is missing, has the wrong
        size or does not match its recorded digest (the store is damaged).
        """
        rows = storage.uploads(spec.round_id)
        current = storage.checkpoint(spec.round_id)
        if current is None:
            if any(r.folded for r in rows):
                raise ValueError(
                    f"round {spec.round_id!r}: uploads are recorded as folded but there is "
                    "no checkpoint"
                )
            return cls(storage, spec), rows
        path = storage.checkpoint_path(spec.round_id, current.slot)
        vector = read_vector(path, spec.length, DTYPE)
        if not hmac.compare_digest(payload_digest(vector.data), current.digest):
            raise ValueError(f"round {spec.round_id!r}: checkpoint {path.name} is damaged")
        return cls(storage, spec, vector, current), rows

    def files(self) -> set[str]:
        """Names of the files this accumulator needs (the current checkpoint slot)."""
        if self._checkpoint is None:
            return set()
        return {self._storage.checkpoint_path(self.round_id, self._checkpoint.slot).name}

    # --- group commit ----------------------------------------------------------------------

    def submit(self, row: UploadRecord, fold: Fold | None = None) -> None:
        """Fold (with ``fold``, for a folded full share) and make ``row`` durable together
        with every other upload queued meanwhile; returns once it is.

        Raises :class:`Unavailable` if the batch could not be made durable (the upload
        was not recorded and may be sent again).
        """
        entry = _Entry(row)
        with self._cond:
            if fold is not None:
                fold(self.vector)
            self._pending.append(entry)
            while not entry.done:
                if self._writing:
                    self._cond.wait()
                else:
                    self._write_batch()
        if entry.error is not None:
            raise Unavailable(
                f"party could not make the upload durable ({entry.error}); send it again"
            ) from entry.error

    def _write_batch(self) -> None:
        """Write everything queued (called with the lock held; released while SQLite
        commits, so the next batch can fold meanwhile)."""
        self._writing = True
        batch, self._pending = self._pending, []
        checkpoint: CheckpointRow | None = None
        try:
            if any(e.row.folded for e in batch):
                # Under the lock: the file holds exactly the folds of this batch and earlier.
                checkpoint = self._write_checkpoint()
            self._cond.release()
            try:
                self._storage.record_uploads([e.row for e in batch], checkpoint)
            finally:
                self._cond.acquire()
        except BaseException as exc:
            log.error("round %s: a batch of %d uploads failed: %s", self.round_id, len(batch), exc)
            self._roll_back(batch + self._pending, exc)
        else:
            if checkpoint is not None:
                self._checkpoint = checkpoint
                self.checkpoints_written += 1
            for e in batch:
                e.done = True
        finally:
            self._writing = False
            self._cond.notify_all()

    def _write_checkpoint(self) -> CheckpointRow:
        current = self._checkpoint
        slot = 0 if current is None else 1 - current.slot
        generation = 1 if current is None else current.generation + 1
        path = self._storage.checkpoint_path(self.round_id, slot)
        write_vector(path, self.vector)
        return CheckpointRow(self.round_id, slot, generation, payload_digest(self.vector.data))

    def _roll_back(self, entries: list[_Entry], exc: BaseException) -> None:
        """The vector holds folds that are not durable: go back to the last checkpoint and
        refuse every queued upload (each may be sent again)."""
        for e in entries:
            e.done, e.error = True, exc
        self._pending = []
        if self._checkpoint is None:
            self.vector.fill(0)
        else:
            path = self._storage.checkpoint_path(self.round_id, self._checkpoint.slot)
            self.vector[:] = read_vector(path, len(self.vector), DTYPE)

    # --- commit --------------------------------------------------------------------------

    def aggregate(
        self,
        engine: Engine,
        party: int,
        cohort: Iterable[Holding],
        uploads: Iterable[UploadRecord],
    ) -> RingVector:
        """This party's aggregate share over ``cohort``: the folded shares plus the
        cohort's seeds (expanded now) and its full shares kept apart.

        Pre-condition (checked by the aggregator before the round changes state): every
        folded share is in the cohort. The sum is computed in the accumulator's own memory
        where the engine allows it (no second vector of d elements): a commit that fails
        after this must call :meth:`restore` before the round is used again.
        """
        members = set(cohort)
        rows = list(uploads)
        with self._cond:
            while self._writing or self._pending:
                self._cond.wait()
            self._drop_spare_slot()  # no more checkpoints: room for the aggregate
            total = engine.adopt(self.vector)
        extra = (
            self._stored_share(party, r)
            for r in rows
            if not r.folded and Holding(r.client_id, r.sharing_id) in members
        )
        total = engine.accumulate_many(total, extra)
        return np.ascontiguousarray(engine.to_ring(total))

    def _drop_spare_slot(self) -> None:
        spare = 0 if self._checkpoint is None else 1 - self._checkpoint.slot
        self._storage.checkpoint_path(self.round_id, spare).unlink(missing_ok=True)

    def restore(self) -> None:
        """Go back to the last checkpoint (after a commit that failed half-way)."""
        with self._cond:
            self._roll_back([], RuntimeError("restored"))

    def _stored_share(self, party: int, row: UploadRecord) -> Share:
        if row.kind is ShareKind.SEED:
            return SeedShare(
                party=party,
                length=self._spec.length,
                seed=Seed(row.seed),
                context=SharingContext(self.round_id, row.client_id),
            )
        raw = self._storage.read_payload(row)
        return FullShare(party=party, vector=np.frombuffer(raw, dtype=DTYPE))
