"""One upload in progress on one party: validated header in, durable acknowledged share out.

Chunks are hashed, written to a spool file and buffered as they arrive;
:meth:`UploadSession.finish` checks length and digest, makes the spool file
durable and records it, then adds the share to the round's accumulator. An
upload that fails anywhere (bad chunk, wrong digest, client gone, round closed)
is aborted and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import TYPE_CHECKING

import numpy as np

from mpcagg.mpc import FullShare, Seed, SeedShare, SharingContext
from mpcagg.mpc.ring import DTYPE, RingVector
from mpcagg.protocol.errors import InvalidArgument
from mpcagg.protocol.state import RoundState, UploadAck, UploadHeader
from mpcagg.servers.round import Round, UploadRecord
from mpcagg.servers.storage import DIRECT_ALIGN, UploadRow

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator

DIGEST_BYTES = 32


def aligned_empty(length: int, align: int = DIRECT_ALIGN) -> RingVector:
    """An uninitialised ring vector whose data starts on an ``align``-byte boundary
    (numpy's allocator gives 16-byte alignment; O_DIRECT needs the page)."""
    raw = np.empty(length * 8 + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + length * 8].view(DTYPE)


class BufferPool:
    """Reuses the buffers full shares are received into.

    A fresh ``np.empty`` of 8·d bytes is new memory that the kernel maps and
    zero-fills page by page as the first chunk is copied in; profiling showed
    that as the largest single cost of ingest. Kept buffers (up to ``keep_bytes``
    in all) skip it.
    """

    def __init__(self, keep_bytes: int = 1 << 30) -> None:
        self._keep = keep_bytes
        self._kept = 0
        self._free: dict[int, list[RingVector]] = {}
        self._lock = threading.Lock()

    def take(self, length: int) -> RingVector:
        with self._lock:
            free = self._free.get(length)
            if free:
                self._kept -= length * 8
                return free.pop()
        return aligned_empty(length)

    def give(self, buffer: RingVector) -> None:
        with self._lock:
            if self._kept + buffer.nbytes <= self._keep:
                self._free.setdefault(len(buffer), []).append(buffer)
                self._kept += buffer.nbytes


class UploadSession:
    """One upload in progress: chunks are hashed, spooled and buffered; :meth:`finish`
    makes it durable, then adds it to the round's accumulator."""

    def __init__(self, agg: Aggregator, rnd: Round, header: UploadHeader) -> None:
        self._agg = agg
        self._rnd = rnd
        self.header = header
        self._total = header.length * 8 if header.kind == "full" else len(header.seed)
        # Full shares go to a spool file; a seed is stored with its database row.
        self._writer = (
            agg.storage.open_spool(
                header.round_id, header.client_id, header.kind, header.sharing_id
            )
            if header.kind == "full"
            else None
        )
        self._hash = hashlib.sha256()
        self._offset = 0
        self._buffer: RingVector | None = None
        self._flushed = 0  # bytes of the buffer already written to the spool file
        self._done = False
        self._direct = False
        if self._writer is not None:
            self._buffer = agg.buffers.take(header.length)
            self._direct = self._writer.direct and self._buffer.ctypes.data % DIRECT_ALIGN == 0
        else:
            self._write(header.seed)

    @property
    def expects_chunks(self) -> bool:
        return self.header.kind == "full"

    def add_chunk(self, data: bytes) -> None:
        if not self.expects_chunks:
            raise InvalidArgument("a seed upload carries no chunks; got a chunk after the header")
        if not data:
            raise InvalidArgument("empty chunk; expected 1 or more bytes")
        self._write(data)

    def _write(self, data: bytes) -> None:
        end = self._offset + len(data)
        if end > self._total:
            raise InvalidArgument(
                f"chunks exceed the declared length of {self.header.length} elements "
                f"({self._total} bytes): got at least {end} bytes"
            )
        self._hash.update(data)
        if self._buffer is not None:
            raw = self._buffer.data.cast("B")
            raw[self._offset : end] = data
            self._spool(raw, end if not self._direct else end - end % DIRECT_ALIGN)
        self._offset = end

    def _spool(self, raw: memoryview, upto: int) -> None:
        """Write the buffer's bytes ``[flushed, upto)`` to the spool file."""
        if upto > self._flushed and self._writer is not None:
            self._writer.write_at(raw[self._flushed : upto], self._flushed, direct=self._direct)
            self._flushed = upto

    def finish(self) -> UploadAck:
        """Check completeness and digest, make durable, accumulate, acknowledge."""
        h = self.header
        if self._offset != self._total:
            raise InvalidArgument(
                f"upload ended after {self._offset} bytes; the header declared "
                f"{h.length} elements ({self._total} bytes)"
            )
        if not hmac.compare_digest(self._hash.digest(), h.payload_digest):
            raise InvalidArgument("payload digest does not match the data received")
        writer = self._writer
        if writer is not None:
            if self._buffer is not None and self._flushed < self._total:  # the unaligned tail
                tail = self._buffer.data.cast("B")[self._flushed : self._total]
                writer.write_at(tail, self._flushed)
                self._flushed = self._total
            writer.sync()
        rnd = self._rnd
        cid = h.client_id
        with rnd.lock:
            rnd.require(RoundState.OPEN)
            rnd.committing.add(cid)  # from here a manifest waits for this upload
        try:
            # The slow, durable part runs outside the round lock, so uploads overlap.
            if writer is not None:
                writer.publish()
            self._agg.storage.record_upload(
                UploadRow(
                    h.round_id,
                    cid,
                    h.sharing_id,
                    h.kind,
                    h.payload_digest,
                    h.length,
                    self._total,
                    seed=h.seed,
                )
            )
        except BaseException:
            with rnd.lock:
                rnd.committing.discard(cid)
                rnd.changed.notify_all()
            raise
        with rnd.lock:
            self._done = True
            rnd.accumulator = self._agg.engine.accumulate(rnd.accumulator, self._share())
            rnd.uploads[cid] = UploadRecord(
                cid, h.sharing_id, h.kind, h.payload_digest, self._total
            )
            rnd.inflight.discard(cid)
            rnd.committing.discard(cid)
            rnd.changed.notify_all()
        self._release()
        self._agg.metrics_upload(self._total)
        return UploadAck(
            h.round_id,
            h.client_id,
            self._agg.party,
            h.payload_digest,
            duplicate=False,
            sharing_id=h.sharing_id,
        )

    def _share(self) -> FullShare | SeedShare:
        h = self.header
        if self._buffer is not None:
            return FullShare(party=self._agg.party, vector=self._buffer)
        return SeedShare(
            party=self._agg.party,
            length=h.length,
            seed=Seed(h.seed),
            context=SharingContext(h.round_id, h.client_id),
        )

    def _release(self) -> None:
        if self._buffer is not None:
            self._agg.buffers.give(self._buffer)
            self._buffer = None

    def abort(self) -> None:
        """Forget a partial or refused upload: nothing of it stays on disk or in memory."""
        if self._done:
            return
        self._release()
        if self._writer is not None:
            self._writer.abort()
        with self._rnd.lock:
            self._rnd.inflight.discard(self.header.client_id)
            self._rnd.bytes_received -= self._total
            self._rnd.changed.notify_all()
