"""One upload in progress on one party: validated header in, durable acknowledged share out.

A seed (32 bytes) arrives in the header. A full share arrives in chunks, which are
digested (:mod:`mpc.digest`) and **staged** as they come: the chunk objects gRPC
delivered are kept as they are (no copy). Each upload first reserves its size from the
party's staging budget (:class:`StagingBudget`), waiting while other uploads hold it,
so memory stays bounded whatever the number of uploads in flight; an upload larger than
the whole budget keeps that much in memory and the rest in its staging file
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

from mpcagg.mpc.digest import DIGEST_BYTES, PayloadDigest
from mpcagg.mpc.ring import DTYPE, ELEMENT_BYTES, RingVector
from mpcagg.protocol.errors import Busy, InvalidArgument
from mpcagg.protocol.state import RoundState, ShareKind, UploadAck, UploadHeader
from mpcagg.servers.records import UploadRecord
from mpcagg.servers.round import Round
from mpcagg.servers.spool import fsync_dir

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator

__all__ = [
    "DIGEST_BYTES",
    "STAGING_MEMORY_BYTES",
    "StagingBudget",
    "UploadSession",
    "unmap_large_allocations",
]

STAGING_MEMORY_BYTES = 256 << 20
"""Bytes of in-flight full shares one party keeps in memory (a larger upload keeps this
much, the rest in its staging file)."""

STAGING_WAIT_S = 60.0
"""How long an upload waits for staging memory before it is refused (retryable)."""

_READ_BYTES = 4 << 20

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def unmap_large_allocations(threshold: int = 1 << 20) -> bool:
    """Have glibc serve allocations of ``threshold`` bytes and more with their own
    mapping, returned to the system when freed (once per process, at server start).

    Staged chunks are 1-4 MiB ``bytes`` objects that come and go by the thousand. By
    default glibc raises its mmap threshold to the size of the first such block freed,
    after which they come from (per-thread) arenas that keep the freed memory: a party
    measured 343 MB peak RSS for one round of 300 × 10^6 against 256 MB with a fixed
    threshold. Returns False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    if os.environ.get("MPCAGG_EXPERIMENT_THRESHOLD"):
        threshold = int(os.environ["MPCAGG_EXPERIMENT_THRESHOLD"])
        if threshold == 0:
            return False

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold) == 1)


class StagingBudget:
    """How many bytes of uploads in flight a party may still keep in memory."""

    def __init__(self, total: int = STAGING_MEMORY_BYTES, wait_s: float = STAGING_WAIT_S) -> None:
        self.total = total
        self._wait_s = wait_s
        self._free = total
        self._cond = threading.Condition()

    def reserve(self, n: int) -> int:
        """Reserve ``min(n, total)`` bytes, waiting for uploads that hold them; returns
        the bytes reserved. Raises :class:`Busy` (retryable) after ``wait_s``."""
        want = min(n, self.total)
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= want, self._wait_s):
                raise Busy(
                    f"this server is staging {self.total - self._free} bytes of uploads, its "
                    f"limit ({self.total}); retry shortly"
                )
            self._free -= want
        return want

    def release(self, n: int) -> None:
        """Give back ``n`` bytes and wake uploads waiting for them."""
        with self._cond:
            self._free += n
            self._cond.notify_all()

    @property
    def in_use(self) -> int:
        """Bytes currently reserved by uploads in progress."""
        with self._cond:
            return self.total - self._free


class _Staged:
    """One full upload's bytes until it finishes: ``[0, in_memory)`` as the chunks that
    arrived, the rest at its offset in the staging file."""

    def __init__(self, path: Path, budget: StagingBudget, nbytes: int) -> None:
        self.path = path
        self._budget = budget
        self._reserved = budget.reserve(nbytes)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except BaseException:
            budget.release(self._reserved)
            raise
        self._chunks: list[bytes] = []
        self.in_memory = 0
        self.size = 0

    def add(self, data: bytes) -> None:
        n = len(data)
        if self.size == self.in_memory and self.in_memory + n <= self._reserved:
            self._chunks.append(data)
            self.in_memory += n
        else:
            view = memoryview(data)
            offset = self.size
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        self.size += n

    def pieces(self) -> Iterator[bytes]:
        """The staged bytes in order, in pieces of any length."""
        yield from self._chunks
        offset = self.in_memory
        while offset < self.size:
            piece = os.pread(self._fd, min(_READ_BYTES, self.size - offset), offset)
            if not piece:
                raise OSError(f"staging file {self.path.name} ended early")
            yield piece
            offset += len(piece)

    def fold_into(self, vector: RingVector) -> None:
        """``vector += the staged share`` (little-endian uint64), modulo 2^64."""
        pos, carry = 0, b""
        for piece in self.pieces():
            if carry:  # a chunk boundary fell inside an element
                piece, carry = carry + piece, b""
            n = len(piece) // ELEMENT_BYTES
            if n:
                target = vector[pos : pos + n]
                np.add(target, np.frombuffer(piece, dtype=DTYPE, count=n), out=target)
                pos += n
            if len(piece) > n * ELEMENT_BYTES:
                carry = bytes(piece[n * ELEMENT_BYTES :])
        if pos != len(vector) or carry:
            raise InvalidArgument(f"staged share has {pos} elements, expected {len(vector)}")

    def persist_as(self, final: Path) -> None:
        """Make the staged bytes durable as ``final``: write the in-memory part into the
        staging file, fsync it, rename it into place, fsync the directory."""
        offset = 0
        for chunk in self._chunks:
            view = memoryview(chunk)
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        os.fsync(self._fd)
        os.replace(self.path, final)
        fsync_dir(final.parent)

    def release(self) -> None:
        """Give the memory back, close and delete the staging file (if still there)."""
        self._budget.release(self._reserved)
        self._chunks, self.in_memory, self._reserved = [], 0, 0
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
        """Whether the header announced a full share (chunks follow), not a seed."""
        return self.header.kind == ShareKind.FULL

    def add_chunk(self, data: bytes) -> None:
        """Digest and stage the next chunk.

        Raises :class:`InvalidArgument` for a chunk after a seed header, an empty chunk,
        or one that runs past the declared length.
        """
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
        row = UploadRecord(
            h.round_id, cid, h.sharing_id, ShareKind(h.kind), h.payload_digest, h.length,
            self._total, seed=h.seed, folded=self._fold,
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
            rnd.uploads[cid] = row.metadata()
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
