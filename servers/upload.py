"""One upload in progress on one party: validated header in, durable acknowledged share out.

A seed (32 bytes) arrives in the header. A full share arrives in chunks, which are
digested (:mod:`mpc.digest`) and **staged** as they come, copied into a buffer from the
party's staging budget (:class:`StagingBudget`), reused from one upload to the next.
Each upload takes its buffer before reading a chunk, waiting while other uploads hold
the memory, so memory stays bounded whatever the number of uploads in flight; an upload
larger than the whole budget buffers that much and the rest goes to its staging file
``<client>.<sharing>.tmp`` (never synced), so memory stays bounded whatever the length.

:meth:`UploadSession.finish` checks length and digest, then makes the upload durable
through the round's group commit (:mod:`servers.accumulator`):

- a full share sent after every seed of its sharing was acknowledged
  (``seeds_acknowledged``) is **folded** into the round's accumulator and then dropped;
- a full share sent earlier is **kept apart** in ``<client>.full`` (fsync'ed, renamed
  into place) until the round commits, since its sharing may not end up in the cohort;
- a seed is stored in its row.

An upload that fails anywhere (bad chunk, wrong digest, client gone, round closed) is
aborted and leaves nothing behind.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mpcagg.mpc.digest import DIGEST_BYTES, PayloadDigest
from mpcagg.mpc.ring import DTYPE, ELEMENT_BYTES, RingVector
from mpcagg.protocol.errors import Busy, InvalidArgument
from mpcagg.protocol.state import RoundState, ShareKind, UploadAck, UploadHeader
from mpcagg.servers.round import Round, UploadRecord
from mpcagg.servers.spool import fsync_dir
from mpcagg.servers.storage import UploadRow

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator

__all__ = [
    "DIGEST_BYTES",
    "STAGING_MEMORY_BYTES",
    "StagingBudget",
    "UploadSession",
]

STAGING_MEMORY_BYTES = 256 << 20
"""Bytes of in-flight full shares one party keeps in memory (a larger upload keeps this
much, the rest in its staging file)."""

STAGING_WAIT_S = 60.0
"""How long an upload waits for staging memory before it is refused (retryable)."""

_READ_BYTES = 4 << 20  # a multiple of 8: file pieces hold whole elements


class StagingBudget:
    """The memory a party stages uploads in: buffers of at most ``total`` bytes in all,
    kept for the next upload of the same size once released (a round's uploads all
    have one size). A reused buffer is memory already mapped: a fresh one costs a page
    fault per 4 KiB on first write, and so does holding gRPC's chunk objects instead
    (each a fresh mapping that is unmapped again when freed), measured at about a third
    of a party's CPU time at N = 100, d = 10^6."""

    def __init__(self, total: int = STAGING_MEMORY_BYTES, wait_s: float = STAGING_WAIT_S) -> None:
        self.total = total
        self._wait_s = wait_s
        self._used = 0  # bytes of buffers lent out
        self._kept: list[npt.NDArray[np.uint8]] = []  # released, ready to lend again
        self._cond = threading.Condition()

    def take(self, n: int) -> npt.NDArray[np.uint8]:
        """A buffer of ``min(n, total)`` bytes, waiting while other uploads hold the memory.
        Raises :class:`Busy` (retryable) after ``wait_s``."""
        want = min(n, self.total)
        with self._cond:
            if not self._cond.wait_for(lambda: self._used + want <= self.total, self._wait_s):
                raise Busy(
                    f"this server is staging {self._used} bytes of uploads, its limit "
                    f"({self.total}); retry shortly"
                )
            self._used += want
            for i, buf in enumerate(self._kept):
                if len(buf) == want:
                    return self._kept.pop(i)
            while self._kept and self._used + self._kept_bytes() > self.total:
                self._kept.pop(0)  # another size: make room
        return np.empty(want, dtype=np.uint8)

    def give(self, buf: npt.NDArray[np.uint8]) -> None:
        with self._cond:
            self._used -= len(buf)
            if len(buf):
                self._kept.append(buf)
            self._cond.notify_all()

    def _kept_bytes(self) -> int:
        return sum(len(b) for b in self._kept)

    @property
    def in_use(self) -> int:
        """Bytes lent to uploads in progress."""
        with self._cond:
            return self._used


class _Staged:
    """One full upload's bytes until it finishes: the first ``len(buffer)`` in a staging
    buffer, the rest at their offset in the staging file."""

    def __init__(self, path: Path, budget: StagingBudget, nbytes: int) -> None:
        self.path = path
        self._budget = budget
        self._buffer = budget.take(nbytes)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except BaseException:
            budget.give(self._buffer)
            raise
        self.size = 0

    @property
    def in_memory(self) -> int:
        return min(self.size, len(self._buffer))

    def add(self, data: bytes) -> None:
        n = len(data)
        view = memoryview(data)
        room = len(self._buffer) - self.size
        if room > 0:
            k = min(room, n)
            self._buffer[self.size : self.size + k] = np.frombuffer(data, np.uint8, k)
            view = view[k:]
        offset = self.size + n - len(view)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        self.size += n

    def _file_pieces(self) -> Iterator[bytes]:
        """The bytes beyond the buffer, from the staging file, in whole elements."""
        offset = len(self._buffer)
        while offset < self.size:
            want = min(_READ_BYTES, self.size - offset)
            piece = os.pread(self._fd, want, offset)
            while len(piece) < want:  # a short read: finish the piece
                more = os.pread(self._fd, want - len(piece), offset + len(piece))
                if not more:
                    raise OSError(f"staging file {self.path.name} ended early")
                piece += more
            yield piece
            offset += want

    def fold_into(self, vector: RingVector) -> None:
        """``vector += the staged share`` (little-endian uint64), modulo 2^64."""
        if self.size != len(vector) * ELEMENT_BYTES:
            raise InvalidArgument(f"staged {self.size} bytes, expected {len(vector) * 8}")
        k = self.in_memory // ELEMENT_BYTES
        target = vector[:k]
        np.add(target, self._buffer[: k * ELEMENT_BYTES].view(DTYPE), out=target)
        for piece in self._file_pieces():
            n = len(piece) // ELEMENT_BYTES
            target = vector[k : k + n]
            np.add(target, np.frombuffer(piece, dtype=DTYPE), out=target)
            k += n

    def persist_as(self, final: Path) -> None:
        """Make the staged bytes durable as ``final``: write the buffered part into the
        staging file, fsync it, rename it into place, fsync the directory."""
        view = self._buffer[: self.in_memory].data
        offset = 0
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        os.fsync(self._fd)
        os.replace(self.path, final)
        fsync_dir(final.parent)

    def release(self) -> None:
        """Give the buffer back, close and delete the staging file (if still there)."""
        self._budget.give(self._buffer)
        self._buffer = np.empty(0, dtype=np.uint8)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class UploadSession:
    """One upload in progress: chunks are digested and staged; :meth:`finish` makes it
    durable (folded, kept apart or a seed row) and acknowledges it."""

    def __init__(self, agg: Aggregator, rnd: Round, header: UploadHeader) -> None:
        self._agg = agg
        self._rnd = rnd
        self.header = header
        full = header.kind == ShareKind.FULL
        self._total = header.length * ELEMENT_BYTES if full else len(header.seed)
        self._fold = full and header.seeds_acknowledged
        self._digest = PayloadDigest()
        self._offset = 0
        self._done = False
        self._staged: _Staged | None = None
        if full:
            path = agg.storage.staging_path(header.round_id, header.client_id, header.sharing_id)
            self._staged = _Staged(path, agg.staging, self._total)
        else:
            self._digest.update(header.seed)
            self._offset = self._total

    @property
    def expects_chunks(self) -> bool:
        return self.header.kind == ShareKind.FULL

    def add_chunk(self, data: bytes) -> None:
        if self._staged is None:
            raise InvalidArgument("a seed upload carries no chunks; got a chunk after the header")
        if not data:
            raise InvalidArgument("empty chunk; expected 1 or more bytes")
        end = self._offset + len(data)
        if end > self._total:
            raise InvalidArgument(
                f"chunks exceed the declared length of {self.header.length} elements "
                f"({self._total} bytes): got at least {end} bytes"
            )
        self._digest.update(data)
        self._staged.add(data)
        self._offset = end

    def finish(self) -> UploadAck:
        """Check completeness and digest, make durable, acknowledge."""
        h = self.header
        if self._offset != self._total:
            raise InvalidArgument(
                f"upload ended after {self._offset} bytes; the header declared "
                f"{h.length} elements ({self._total} bytes)"
            )
        if not hmac.compare_digest(self._digest.digest(), h.payload_digest):
            raise InvalidArgument("payload digest does not match the data received")
        rnd, cid, staged = self._rnd, h.client_id, self._staged
        with rnd.lock:
            rnd.require(RoundState.OPEN)
            rnd.committing.add(cid)  # from here a manifest waits for this upload
        row = UploadRow(
            h.round_id, cid, h.sharing_id, h.kind, h.payload_digest, h.length, self._total,
            seed=h.seed, folded=self._fold,
        )  # fmt: skip
        kept = self._agg.storage.share_path(h.round_id, cid, h.kind) if staged else None
        try:
            # The slow, durable part runs outside the round lock, so uploads overlap.
            assert rnd.ingest is not None  # an OPEN round has one
            if staged is not None and self._fold:
                rnd.ingest.submit(row, fold=staged.fold_into)
            else:
                if staged is not None and kept is not None:
                    staged.persist_as(kept)
                rnd.ingest.submit(row)
        except BaseException:
            if kept is not None and not self._fold:
                kept.unlink(missing_ok=True)
            with rnd.lock:
                rnd.committing.discard(cid)
                rnd.changed.notify_all()
            raise
        with rnd.lock:
            self._done = True
            rnd.uploads[cid] = UploadRecord(
                cid, h.sharing_id, h.kind, h.payload_digest, self._total, folded=self._fold
            )
            rnd.inflight.discard(cid)
            rnd.committing.discard(cid)
            rnd.changed.notify_all()
        self._release()
        self._agg.metrics_upload(self._total, h.kind)
        return UploadAck(
            h.round_id,
            h.client_id,
            self._agg.party,
            h.payload_digest,
            duplicate=False,
            sharing_id=h.sharing_id,
        )

    def _release(self) -> None:
        if self._staged is not None:
            self._staged.release()
            self._staged = None

    def abort(self) -> None:
        """Forget a partial or refused upload: nothing of it stays on disk or in memory."""
        if self._done:
            return
        self._agg.events.upload("aborted", self.header.kind, 0)
        self._release()
        with self._rnd.lock:
            self._rnd.inflight.discard(self.header.client_id)
            self._rnd.bytes_received -= self._total
            self._rnd.changed.notify_all()
