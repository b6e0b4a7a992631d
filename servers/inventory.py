"""What a party's store says about its rounds: state, counts, digests and times.

One read model for the operator commands (``mpcagg rounds``), served by a running
party over the Admin service and read straight from a stopped party's data directory
(``--data-dir``). It opens the SQLite store read-only and changes nothing, so it can
run beside a live server (WAL readers do not block the writer).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from mpcagg.protocol.admin import RoundSummary
from mpcagg.protocol.errors import ConfigError, NotFound
from mpcagg.protocol.spec import cohort_from_json, spec_from_canonical
from mpcagg.protocol.state import RoundState
from mpcagg.servers import schema

DB_FILE = "meta.sqlite3"


_ROUNDS = """
SELECT r.round_id, r.spec, r.spec_digest, r.state, r.reason, r.cohort, r.cohort_digest,
       r.created_at, {times},
       (SELECT count(*) FROM uploads u WHERE u.round_id = r.round_id),
       (SELECT count(*) FROM uploads u WHERE u.round_id = r.round_id AND u.kind = 'full'),
       (SELECT coalesce(sum(nbytes), 0) FROM uploads u WHERE u.round_id = r.round_id)
FROM rounds r {join} {where} ORDER BY r.created_at, r.round_id
"""


class Inventory:
    """Read-only view of one party's store. Close it (or use ``with``)."""

    def __init__(self, data_dir: Path, party: int = -1) -> None:
        self.data_dir = Path(data_dir)
        self.party = party
        path = self.data_dir / DB_FILE
        if not path.is_file():
            raise ConfigError(f"{self.data_dir} holds no mpcagg store ({DB_FILE} is missing)")
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.version = schema.check_version(self._db, self.data_dir)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the store in {self.data_dir}: {exc}") from None

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the read-only connection to the store."""
        self._db.close()

    def rounds(self) -> list[RoundSummary]:
        """Every round the store holds, oldest first."""
        return self._query("", ())

    def round(self, round_id: str) -> RoundSummary:
        """One round; :class:`NotFound` if the store does not hold it."""
        found = self._query("WHERE r.round_id = ?", (round_id,))
        if not found:
            raise NotFound(f"unknown round {round_id!r}")
        return found[0]

    def _query(self, where: str, args: tuple[object, ...]) -> list[RoundSummary]:
        if self.version >= 2:
            sql = _ROUNDS.format(
                times="t.closed_at, t.finished_at",
                join="LEFT JOIN round_times t ON t.round_id = r.round_id",
                where=where,
            )
        else:  # a store from before round_times: no times to show
            sql = _ROUNDS.format(times="NULL, NULL", join="", where=where)
        rows = self._db.execute(sql, args).fetchall()
        return [self._summary(row) for row in rows]

    def _summary(self, row: Any) -> RoundSummary:
        rid, raw_spec, spec_digest, state, reason, cohort, cohort_digest, created = row[:8]
        closed, finished, uploads, full, nbytes = row[8:]
        spec = spec_from_canonical(bytes(raw_spec))
        committed = state == RoundState.COMMITTED.value
        # A CLOSING round's recorded cohort is the leader's decision, not yet committed.
        cohort_size = len(cohort_from_json(cohort)) if committed and cohort else 0
        known = state in {s.value for s in RoundState}
        return RoundSummary(
            round_id=str(rid),
            party=self.party,
            state=RoundState(state) if known else RoundState.UNKNOWN,
            reason=str(reason or ""),
            spec_digest=bytes(spec_digest),
            cohort_size=cohort_size,
            cohort_digest=bytes(cohort_digest or b"") if committed else b"",
            uploads=int(uploads),
            full_shares=int(full),
            seed_shares=int(uploads) - int(full),
            share_bytes=int(nbytes),
            created_at=float(created),
            closed_at=None if closed is None else float(closed),
            finished_at=None if finished is None else float(finished),
            deadline_unix=spec.deadline_unix,
            spec=spec,
        )
