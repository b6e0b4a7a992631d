"""Files that hold share material on one party, and how they are made durable.

Three kinds, all mode 0600 under ``spool/<round_id>/`` (:mod:`servers.storage`):

- **checkpoints** of a round's accumulator (two slots, ``acc-0.bin`` / ``acc-1.bin``):
  :func:`write_vector` writes the whole vector into the slot that is not current and
  ``fdatasync``\\ s it; the database then names it current (no rename, no directory
  sync after the first write of a slot);
- **spool files** (``<client>.full``, ``aggregate.bin``): :class:`SpoolWriter`, written to
  a temporary name, fsync'ed, renamed into place and the directory fsync'ed;
- **staging files** (``*.tmp``): an upload in progress, never synced (a crash loses
  the upload, which was not acknowledged).

Page-aligned runs are written with ``O_DIRECT`` where the file system allows it: on
the benchmark VM a page-cache write costs about 2 CPU-s/GB of kernel time against 0.1
for ``O_DIRECT`` (``bench/studies/ingest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DIRECT_ALIGN = 4096
"""Offset, length and memory alignment that O_DIRECT writes keep to."""

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned_empty(
    length: int, dtype: npt.DTypeLike = "<u8", align: int = DIRECT_ALIGN
) -> npt.NDArray[Any]:
    """An uninitialised vector whose data starts on an ``align``-byte boundary (numpy's
    allocator gives 16-byte alignment; O_DIRECT needs the page)."""
    dt = np.dtype(dtype)
    raw = np.empty(length * dt.itemsize + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + length * dt.itemsize].view(dt)


def aligned_zeros(length: int, dtype: npt.DTypeLike = "<u8") -> npt.NDArray[Any]:
    """A zeroed array of ``length`` elements of ``dtype``, aligned for ``O_DIRECT``
    (:data:`DIRECT_ALIGN`).
    """
    out = aligned_empty(length, dtype)
    out.fill(0)
    return out


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` (makes a rename or unlink in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_vector(path: Path, vector: npt.NDArray[Any]) -> None:
    """Overwrite ``path`` with ``vector``'s bytes and ``fdatasync`` it.

    A new file is created 0600 and its directory fsync'ed, so the name survives a
    crash too. The page-aligned prefix goes through ``O_DIRECT`` when ``vector`` is
    page-aligned (:func:`aligned_empty`) and the file system allows it.
    """
    created = not path.exists()
    array = np.ascontiguousarray(vector)
    raw = array.data.cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        direct_len = 0
        if _O_DIRECT and array.ctypes.data % DIRECT_ALIGN == 0:
            direct_len = len(raw) - len(raw) % DIRECT_ALIGN
        if direct_len:
            try:
                dfd = os.open(path, os.O_WRONLY | _O_DIRECT)
            except OSError:  # e.g. tmpfs: no O_DIRECT
                direct_len = 0
            else:
                try:
                    _pwrite_all(dfd, raw[:direct_len], 0)
                finally:
                    os.close(dfd)
        _pwrite_all(fd, raw[direct_len:], direct_len)
        os.ftruncate(fd, len(raw))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def read_vector(path: Path, length: int, dtype: npt.DTypeLike = "<u8") -> npt.NDArray[Any]:
    """A page-aligned vector of ``length`` elements read from ``path``; raises
    :class:`ValueError` if the file holds another number of bytes."""
    out = aligned_empty(length, dtype)
    raw = out.data.cast("B")
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size != len(raw):
            raise ValueError(f"{path.name} holds {size} bytes, expected {len(raw)}")
        got = 0
        while got < len(raw):
            n = f.readinto(raw[got:])
            if not n:
                raise ValueError(f"{path.name} ended after {got} of {len(raw)} bytes")
            got += n
    return out


class SpoolWriter:
    """Writes one payload to a temporary file; :meth:`sync` then :meth:`publish` make it
    durable under its final name.

    Where the file system allows it, a second descriptor opened with ``O_DIRECT``
    writes page-aligned runs straight from the caller's buffer to the disk, skipping
    the copy into the page cache; :attr:`direct` says whether it is available.
    """

    def __init__(self, final: Path, tmp: Path) -> None:
        self.final = final
        self.tmp = tmp
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(self._fd, 0o600)  # share material: owner-only, even over a leftover file
        self._direct_fd = -1
        if _O_DIRECT:
            try:
                self._direct_fd = os.open(tmp, os.O_WRONLY | _O_DIRECT)
            except OSError:  # e.g. tmpfs: no O_DIRECT
                self._direct_fd = -1
        self.nbytes = 0

    @property
    def direct(self) -> bool:
        """Whether writes bypass the page cache (``O_DIRECT`` was accepted)."""
        return self._direct_fd >= 0

    def write_at(self, data: bytes | memoryview, offset: int, *, direct: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``direct``, ``data``'s address, length and
        ``offset`` must be multiples of :data:`DIRECT_ALIGN`."""
        fd = self._direct_fd if direct else self._fd
        view = memoryview(data).cast("B")
        _pwrite_all(fd, view, offset)
        self.nbytes = max(self.nbytes, offset + len(view))

    def sync(self) -> None:
        """fsync the file's content (may run outside any lock)."""
        os.fsync(self._fd)
        self._close()

    def _close(self) -> None:
        for fd in (self._fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._direct_fd = -1

    def publish(self) -> None:
        """Rename into place and fsync the directory (after :meth:`sync`)."""
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)

    def abort(self) -> None:
        """Close and delete the temporary file; the final path is never touched."""
        self._close()
        self.tmp.unlink(missing_ok=True)
