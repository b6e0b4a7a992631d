"""The per-byte ingest work without the network (parts 3 and 4 of :mod:`bench.studies.ingest`).

``stages``: each stage alone on 2 MiB chunks (SHA-256, memcpy, page-cache write,
write + fsync). ``pipelines``: a whole upload's server-side work (hash, buffer,
spool, fsync, accumulate) as the server does it and with the alternatives worth
trying, in GB/s and CPU seconds per GB.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20


def stages(workdir: Path, total: int = 512 * MiB, chunk: int = 2 * MiB) -> list[dict[str, Any]]:
    buf = os.urandom(chunk)
    n = total // chunk
    rows = []

    def timed(label: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        s = time.perf_counter() - t
        rows.append({"stage": label, "gb_per_s": total / s / 1e9})
        print(f"  {label:<40} {total / s / 1e9:6.2f} GB/s")

    def sha() -> None:
        h = hashlib.sha256()
        for _ in range(n):
            h.update(buf)

    target = np.empty(chunk // 8, dtype=np.uint64)

    def copy() -> None:
        raw = target.data.cast("B")
        for _ in range(n):
            raw[:] = buf

    def write(sync: bool) -> Callable[[], None]:
        def run() -> None:
            path = workdir / "stage.bin"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for _ in range(n):
                os.write(fd, buf)
            if sync:
                os.fsync(fd)
            os.close(fd)
            path.unlink()

        return run

    timed("sha256 (hashlib, one thread)", sha)
    timed("copy 2 MiB chunks into a numpy buffer", copy)
    timed("page-cache write (os.write, no fsync)", write(False))
    timed("write + fsync (durable spool)", write(True))
    return rows


def pipelines(
    workdir: Path, upload_bytes: int, uploads: int = 4, repeats: int = 3
) -> list[dict[str, Any]]:
    """The server's per-upload work on 2 MiB chunks, as it is and as it could be (no network).

    Every variant hashes (SHA-256), makes the upload durable (unless ``memory only``)
    and adds it into a long-lived accumulator.

    ``current``: a fresh ``np.empty`` upload buffer per upload, each chunk copied into
    it and ``os.write``-n to the spool; fsync; add the buffer.
    ``pooled buffer``: the same with one reused (already faulted-in) upload buffer.
    ``read back``: no upload buffer: write the spool, fsync, then read the spool back
    (page cache) through a reused 8 MiB scratch buffer and add piece by piece.
    ``writer thread``: as current, the spool writes on a second thread (overlapped).
    ``fallocate``: as current, the spool's blocks reserved up front.
    ``mmap``: the spool file is the buffer (ftruncate + mmap): one copy, no write calls.
    ``pooled + O_DIRECT``: one reused page-aligned buffer; each 8 MiB of it, once
    filled, is written with ``O_DIRECT`` (no page-cache copy); fsync; add the buffer.
    ``memory only``: as current without the spool (what a non-durable server pays).
    """
    import mmap
    import queue

    chunk = 2 * MiB
    data = [os.urandom(chunk) for _ in range(4)]
    n = max(1, upload_bytes // chunk)
    total = n * chunk
    acc = np.zeros(total // 8, dtype=np.uint64)
    pooled = np.zeros(total // 8, dtype=np.uint64)
    scratch = np.zeros(8 * MiB // 8, dtype=np.uint64)
    aligned = mmap.mmap(-1, total)  # page-aligned, for O_DIRECT
    aligned[:] = bytes(total)  # fault it in once, as a long-lived pool buffer would be

    def add(vec: np.ndarray) -> None:
        np.add(acc, vec, out=acc)

    def one(variant: str, path: Path) -> None:
        h = hashlib.sha256()
        buf = pooled if variant == "pooled buffer" else np.empty(total // 8, dtype=np.uint64)
        raw = buf.data.cast("B")
        if variant == "memory only":
            for i in range(n):
                c = data[i % 4]
                h.update(c)
                raw[i * chunk : (i + 1) * chunk] = c
            add(buf)
            return
        if variant == "pooled + O_DIRECT":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
            view = memoryview(aligned)
            try:
                written = 0
                for i in range(n):
                    c = data[i % 4]
                    h.update(c)
                    view[i * chunk : (i + 1) * chunk] = c
                    end = (i + 1) * chunk
                    if end - written >= 8 * MiB or i == n - 1:
                        written += os.write(fd, view[written:end])
                os.fsync(fd)
                add(np.frombuffer(aligned, dtype=np.uint64))
            finally:
                os.close(fd)
                path.unlink()
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if variant == "mmap":
                os.ftruncate(fd, total)
                with mmap.mmap(fd, total) as mm:
                    for i in range(n):
                        c = data[i % 4]
                        h.update(c)
                        mm[i * chunk : (i + 1) * chunk] = c
                    mm.flush()
                    add(np.frombuffer(mm, dtype=np.uint64))
                os.fsync(fd)
                return
            if variant == "fallocate":
                os.posix_fallocate(fd, 0, total)
            q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
            writer = None
            if variant == "writer thread":

                def drain() -> None:
                    while (item := q.get()) is not None:
                        os.write(fd, item)

                writer = threading.Thread(target=drain)
                writer.start()
            for i in range(n):
                c = data[i % 4]
                h.update(c)
                if variant != "read back":
                    raw[i * chunk : (i + 1) * chunk] = c
                if writer is not None:
                    q.put(c)
                else:
                    os.write(fd, c)
            if writer is not None:
                q.put(None)
                writer.join()
            os.fsync(fd)
            if variant == "read back":
                sraw = scratch.data.cast("B")
                offset = 0
                while offset < total:
                    got = os.preadv(fd, [sraw], offset)
                    k = got // 8
                    target = acc[offset // 8 : offset // 8 + k]
                    np.add(target, scratch[:k], out=target)
                    offset += got
            else:
                add(buf)
        finally:
            os.close(fd)
            path.unlink()

    rows = []
    variants = (
        "current",
        "pooled buffer",
        "read back",
        "writer thread",
        "fallocate",
        "mmap",
        "pooled + O_DIRECT",
        "memory only",
    )
    for variant in variants:
        rates, cpus = [], []
        for _ in range(repeats):
            c0 = os.times()
            t = time.perf_counter()
            for u in range(uploads):
                one(variant, workdir / f"pipe-{u}.tmp")
            c1 = os.times()
            gb = uploads * total / 1e9
            rates.append(gb / (time.perf_counter() - t))
            cpus.append((c1.user - c0.user + c1.system - c0.system) / gb)
        rate, cpu = float(np.median(rates)), float(np.median(cpus))
        rows.append({"variant": variant, "gb_per_s": rate, "cpu_s_per_gb": cpu, "runs": rates})
        print(
            f"  {variant:<18} {rate:6.2f} GB/s, {cpu:5.2f} CPU-s/GB  "
            f"(runs: {', '.join(f'{r:.2f}' for r in rates)})"
        )
    return rows
