"""Durable state of one party: SQLite for metadata and seeds, files for vectors.

Layout under the data directory::

    meta.sqlite3                       rounds, acknowledged uploads and their seeds, the
                                       current checkpoint of each open round
                                       (WAL, synchronous=FULL, mode 0600)
    spool/<round_id>/acc-<0|1>.bin     the two checkpoint slots of a round's accumulator
                                       (the folded full shares), little-endian uint64
    spool/<round_id>/<client_id>.full  a full share kept apart (sent before its seeds
                                       were all acknowledged: it may have to stay out)
    spool/<round_id>/aggregate.bin     a committed round's aggregate share
    spool/<round_id>/*.tmp             an upload in progress (deleted on recovery)

Uploads are acknowledged in batches (:mod:`servers.accumulator`): one transaction
records the batch's rows and, if the batch folded full shares into the accumulator,
the checkpoint slot just written and fdatasync'ed (:func:`servers.spool.write_vector`).
A seed (32 bytes) lives in its row; a full share kept apart is fsync'ed and renamed
into place before its row is. On start, the current slot is what the rows say was
folded; the other slot, files without a row and ``*.tmp`` files were never
acknowledged and are deleted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np

from mpcagg.mpc.ring import DTYPE, RingVector
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.spec import Holding, cohort_from_json, cohort_to_json
from mpcagg.protocol.state import ShareKind
from mpcagg.servers import schema
from mpcagg.servers.records import CheckpointRow, RoundRow, UploadRecord
from mpcagg.servers.spool import DIRECT_ALIGN, SpoolWriter, fsync_dir

__all__ = ["DIRECT_ALIGN", "SpoolWriter", "Storage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_id      TEXT PRIMARY KEY,
    spec          BLOB NOT NULL,
    spec_digest   BLOB NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    cohort        TEXT,
    cohort_digest BLOB,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    round_id   TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    sharing_id BLOB NOT NULL,
    kind       TEXT NOT NULL,
    digest     BLOB NOT NULL,
    length     INTEGER NOT NULL,
    nbytes     INTEGER NOT NULL,
    seed       BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (round_id, client_id)
);
"""


def _lock_data_dir(data_dir: Path) -> int:
    """Take an exclusive ``flock`` on ``data_dir/.lock`` for the life of the process.

    Two servers on one data directory would each run recovery and sweep the other's
    spool; the second is refused with :class:`ConfigError` instead.
    """
    path = data_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"data directory {data_dir} is in use by another mpcagg server (pid {holder}); "
            "stop it first, or give this party its own data_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


AGGREGATE_FILE = "aggregate.bin"


class Storage:
    """SQLite metadata and spool files for one party. Thread-safe."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        try:
            # Share material lives here: owner-only, whatever the umask.
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.data_dir / "spool").mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create data directory {self.data_dir}: {exc.strerror}"
            ) from exc
        self._lock_fd = _lock_data_dir(self.data_dir)
        self._lock = threading.Lock()
        db_path = self.data_dir / "meta.sqlite3"
        # Seeds live in the database: create it 0600 (SQLite gives its WAL the same mode).
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(db_path, 0o600)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # An acknowledged upload survives power loss: every commit is fsync'ed.
        self._db.execute("PRAGMA synchronous=FULL")
        # Forgotten seeds are overwritten with zeros, not left in free pages.
        self._db.execute("PRAGMA secure_delete=ON")
        try:  # refuses a store written by a newer mpcagg, migrates an older one
            schema.prepare(self._db, _SCHEMA, self.data_dir)
        except BaseException:
            self.close()
            raise

    def durability(self) -> dict[str, str | bool]:
        """The settings behind §3's guarantees, as this connection's SQLite reports them:
        ``journal_mode`` (``"wal"``), ``synchronous`` (``"FULL"``: every commit fsync'ed)
        and ``secure_delete`` (True: deleted bytes are zeroed). SQLite's own names
        (https://sqlite.org/pragma.html); read-only."""
        with self._lock:
            journal = self._db.execute("PRAGMA journal_mode").fetchone()[0]
            level = self._db.execute("PRAGMA synchronous").fetchone()[0]
            secure = self._db.execute("PRAGMA secure_delete").fetchone()[0]
        levels = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return {
            "journal_mode": str(journal).lower(),
            "synchronous": levels.get(int(level), str(level)),
            "secure_delete": bool(secure),
        }

    def close(self) -> None:
        """Close the database and release the data directory's lock."""
        with self._lock:
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the data directory's lock
                self._lock_fd = -1

    # --- rounds -------------------------------------------------------------------------

    def insert_round(self, round_id: str, spec: bytes, spec_digest: bytes, now: float) -> None:
        """Record a new OPEN round; raises ``sqlite3.IntegrityError`` if it exists."""
        with self._lock:
            self._db.execute(
                "INSERT INTO rounds (round_id, spec, spec_digest, state, created_at) "
                "VALUES (?, ?, ?, 'OPEN', ?)",
                (round_id, spec, spec_digest, now),
            )

    def set_round_state(
        self,
        round_id: str,
        state: str,
        reason: str = "",
        cohort: tuple[Holding, ...] | None = None,
        cohort_digest: bytes | None = None,
    ) -> None:
        """Durably set a round's state and reason, and its cohort and cohort digest if given
        (None keeps what is recorded).
        """
        with self._lock:
            self._db.execute(
                "UPDATE rounds SET state = ?, reason = ?, cohort = COALESCE(?, cohort), "
                "cohort_digest = COALESCE(?, cohort_digest) WHERE round_id = ?",
                (
                    state,
                    reason,
                    None if cohort is None else cohort_to_json(cohort),
                    cohort_digest,
                    round_id,
                ),
            )

    def rounds(self) -> list[RoundRow]:
        """Every recorded round, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round_id, spec, spec_digest, state, reason, cohort, cohort_digest, "
                "created_at FROM rounds ORDER BY created_at"
            ).fetchall()
        return [
            RoundRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                None if r[5] is None else cohort_from_json(r[5]),
                r[6],
                r[7],
            )
            for r in rows
        ]

    # --- uploads ------------------------------------------------------------------------

    def spool_dir(self, round_id: str) -> Path:
        """The round's spool directory (not created)."""
        return self.data_dir / "spool" / round_id

    def share_path(self, round_id: str, client_id: str, kind: ShareKind) -> Path:
        """Where a kept-apart share of ``client_id`` lives (not created)."""
        return self.spool_dir(round_id) / f"{client_id}.{kind}"

    def checkpoint_path(self, round_id: str, slot: int) -> Path:
        """Checkpoint slot ``slot`` (0 or 1) of ``round_id``'s accumulator."""
        directory = self.spool_dir(round_id)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"acc-{slot}.bin"

    def staging_path(self, round_id: str, client_id: str, sharing_id: bytes) -> Path:
        """Where an upload in progress is staged (never synced; swept on recovery)."""
        directory = self.spool_dir(round_id)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{client_id}.{sharing_id.hex()}.tmp"

    def checkpoint(self, round_id: str) -> CheckpointRow | None:
        """The current checkpoint of ``round_id``, or None before its first."""
        with self._lock:
            row = self._db.execute(
                "SELECT round_id, slot, generation, digest FROM checkpoints WHERE round_id = ?",
                (round_id,),
            ).fetchone()
        return None if row is None else CheckpointRow(*row)

    def open_spool(
        self, round_id: str, client_id: str, kind: ShareKind, sharing_id: bytes
    ) -> SpoolWriter:
        """A writer that publishes to :meth:`share_path` through a per-thread ``*.tmp`` file."""
        directory = self.spool_dir(round_id)
        directory.mkdir(parents=True, exist_ok=True)
        final = self.share_path(round_id, client_id, kind)
        tmp = directory / f"{client_id}.{sharing_id.hex()}.{threading.get_ident()}.tmp"
        return SpoolWriter(final, tmp)

    def write_aggregate(self, round_id: str, vector: RingVector) -> None:
        """Durably write a round's aggregate share (same path as a spooled upload)."""
        directory = self.spool_dir(round_id)
        directory.mkdir(parents=True, exist_ok=True)
        writer = SpoolWriter(directory / AGGREGATE_FILE, directory / "aggregate.tmp")
        try:
            writer.write_at(vector.data, 0)
            writer.sync()
            writer.publish()
        except BaseException:
            writer.abort()
            raise

    def read_aggregate(self, round_id: str) -> RingVector:
        """A committed round's aggregate share, mapped read-only from its file: it is read
        from disk (page by page, as it is streamed out) and never held in memory."""
        path = self.spool_dir(round_id) / AGGREGATE_FILE
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=DTYPE)
        return np.memmap(path, dtype=DTYPE, mode="r")

    def keep_only_aggregate(self, round_id: str) -> None:
        """A committed round: drop every individual share (files, checkpoints and seeds)."""
        self.sweep(round_id, keep={AGGREGATE_FILE})
        self.forget_seeds(round_id)

    def record_uploads(self, rows: list[UploadRecord], checkpoint: CheckpointRow | None) -> None:
        """Record a batch of acknowledged uploads (and the checkpoint that folded the
        batch's full shares, if any) in one transaction: one fsync of the WAL."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO uploads (round_id, client_id, sharing_id, kind, digest, "
                    "length, nbytes, seed, folded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.round_id,
                            r.client_id,
                            r.sharing_id,
                            r.kind.value,
                            r.digest,
                            r.length,
                            r.nbytes,
                            r.seed,
                            int(r.folded),
                        )
                        for r in rows
                    ],
                )
                if checkpoint is not None:
                    self._db.execute(
                        "INSERT INTO checkpoints (round_id, slot, generation, digest) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (round_id) DO UPDATE SET "
                        "slot = excluded.slot, generation = excluded.generation, "
                        "digest = excluded.digest",
                        (
                            checkpoint.round_id,
                            checkpoint.slot,
                            checkpoint.generation,
                            checkpoint.digest,
                        ),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_upload(self, row: UploadRecord) -> None:
        """One row on its own (a batch of one, no checkpoint)."""
        self.record_uploads([row], None)

    def uploads(self, round_id: str) -> list[UploadRecord]:
        """The round's acknowledged uploads (seeds included until forgotten), by client id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round_id, client_id, sharing_id, kind, digest, length, nbytes, seed, "
                "folded FROM uploads WHERE round_id = ? ORDER BY client_id",
                (round_id,),
            ).fetchall()
        return [
            UploadRecord(
                r[0], r[1], r[2], ShareKind(r[3]), r[4], r[5], r[6], seed=r[7], folded=bool(r[8])
            )
            for r in rows
        ]

    def read_payload(self, row: UploadRecord) -> bytes:
        """The share as uploaded: a seed from the database, a full share from its file."""
        if row.kind is ShareKind.SEED:
            return row.seed
        return self.share_path(row.round_id, row.client_id, row.kind).read_bytes()

    def forget_seeds(self, round_id: str) -> None:
        """Drop a finished round's seeds (its aggregate share, if any, is durable).

        ``secure_delete`` zeroes the old row's bytes in the database file, and the WAL
        checkpoint (TRUNCATE) copies the change into it and empties the WAL, which
        would otherwise still hold the page with the seeds.
        """
        with self._lock:
            self._db.execute("UPDATE uploads SET seed = x'' WHERE round_id = ?", (round_id,))
            self._db.execute("DELETE FROM checkpoints WHERE round_id = ?", (round_id,))
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sweep(self, round_id: str, keep: set[str]) -> int:
        """Delete spool files of ``round_id`` not in ``keep`` (file names); returns the count."""
        directory = self.spool_dir(round_id)
        removed = 0
        if directory.is_dir():
            for path in directory.iterdir():
                if path.name not in keep:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def delete_round(self, round_id: str) -> None:
        """Remove a finished round for good: its rows and every file it left (retention)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM uploads WHERE round_id = ?", (round_id,))
            self._db.execute("DELETE FROM checkpoints WHERE round_id = ?", (round_id,))
            self._db.execute("DELETE FROM rounds WHERE round_id = ?", (round_id,))
            self._db.execute("COMMIT")
        directory = self.spool_dir(round_id)
        if directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
            fsync_dir(directory.parent)
