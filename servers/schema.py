"""The version of a party's SQLite store (``PRAGMA user_version``) and its migrations.

::

    1   rounds, uploads                    (the original layout; stores written before
                                            versioning carry user_version 0 and are 1)
    2   + round_times: when each round stopped accepting uploads (CLOSING) and when it
          finished (COMMITTED or FAILED), kept by triggers on ``rounds.state``
    3   + checkpoints: the current checkpoint slot of each open round's accumulator;
          uploads.folded: a full share folded into it (not kept in a file of its own)

A server refuses a store whose version is newer than :data:`SCHEMA_VERSION` (written
by a newer mpcagg: this one might misread it) *before* touching it, and migrates an
older one forward in one transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.version import package_version

SCHEMA_VERSION: Final = 3

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

MIGRATIONS: Final[dict[int, str]] = {
    2: f"""
    CREATE TABLE IF NOT EXISTS round_times (
        round_id    TEXT PRIMARY KEY,
        closed_at   REAL,
        finished_at REAL
    );
    CREATE TRIGGER IF NOT EXISTS round_closing AFTER UPDATE OF state ON rounds
    WHEN OLD.state = 'OPEN' AND NEW.state = 'CLOSING'
    BEGIN
        INSERT OR IGNORE INTO round_times (round_id) VALUES (NEW.round_id);
        UPDATE round_times SET closed_at = COALESCE(closed_at, {_NOW})
            WHERE round_id = NEW.round_id;
    END;
    CREATE TRIGGER IF NOT EXISTS round_finished AFTER UPDATE OF state ON rounds
    WHEN NEW.state IN ('COMMITTED', 'FAILED') AND OLD.state <> NEW.state
    BEGIN
        INSERT OR IGNORE INTO round_times (round_id) VALUES (NEW.round_id);
        UPDATE round_times SET finished_at = {_NOW} WHERE round_id = NEW.round_id;
    END;
    CREATE TRIGGER IF NOT EXISTS round_forgotten AFTER DELETE ON rounds
    BEGIN
        DELETE FROM round_times WHERE round_id = OLD.round_id;
    END;
    """,
    3: """
    CREATE TABLE IF NOT EXISTS checkpoints (
        round_id   TEXT PRIMARY KEY,
        slot       INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        digest     BLOB NOT NULL
    );
    ALTER TABLE uploads ADD COLUMN folded INTEGER NOT NULL DEFAULT 0;
    """,
}
"""Version -> the statements that bring version - 1 to it (idempotent)."""


def stored_version(db: sqlite3.Connection) -> int:
    """The store's schema version (a store without any table counts as 0)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version:
        return int(version)
    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rounds'").fetchone()
    return 1 if tables[0] else 0


def check_version(db: sqlite3.Connection, where: Path) -> int:
    """The store's version; :class:`ConfigError` if it is newer than this mpcagg's."""
    version = stored_version(db)
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the store in {where} has schema version {version}, written by a newer mpcagg; "
            f"this is mpcagg {package_version()} (schema {SCHEMA_VERSION}): upgrade mpcagg "
            "on this party, or give it another data_dir"
        )
    return version


def prepare(db: sqlite3.Connection, base: str, where: Path) -> None:
    """Refuse a newer store, create the base tables, migrate to :data:`SCHEMA_VERSION`."""
    version = check_version(db, where)
    db.executescript(base)
    if version >= SCHEMA_VERSION:
        return
    script = "".join(MIGRATIONS[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1))
    db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
