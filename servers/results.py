"""Revealed sums a party keeps: ``<data_dir>/reveal/<round>.sum`` (0600) beside a JSON
record, written only after every party agreed on what was opened."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mpcagg.mpc.ring import DTYPE, RingVector, to_bytes
from mpcagg.protocol.errors import InvalidArgument, NotFound
from mpcagg.protocol.files import write_atomic
from mpcagg.protocol.group import RevealState
from mpcagg.protocol.spec import RoundSpec, spec_from_canonical

RESULTS_DIR = "reveal"


# --- what a party keeps ----------------------------------------------------------------


@dataclass(frozen=True)
class RevealRecord:
    """One round's reveal at this party, as written to ``<round>.json``."""

    round_id: str
    state: RevealState
    deadline_unix: float
    spec: bytes
    """The round spec's canonical JSON (to decode the sum without the party's database)."""
    cohort_size: int
    cohort_digest: bytes
    reason: str = ""
    sum_sha256: bytes = b""
    revealed_unix: float = 0.0

    @property
    def round_spec(self) -> RoundSpec:
        """The round's spec, parsed from its canonical form."""
        return spec_from_canonical(self.spec)

    def to_json(self) -> bytes:
        """This record as the JSON document written beside the sum (version 1)."""
        doc = {
            "v": 1,
            "round_id": self.round_id,
            "state": self.state.value,
            "reason": self.reason,
            "deadline_unix": self.deadline_unix,
            "spec": self.spec.decode(),
            "cohort_size": self.cohort_size,
            "cohort_digest": self.cohort_digest.hex(),
            "sum_sha256": self.sum_sha256.hex(),
            "revealed_unix": self.revealed_unix,
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RevealRecord:
        """Parse :meth:`to_json`'s output; raises :class:`InvalidArgument` for another
        version, ``KeyError``/``ValueError`` for a malformed document.
        """
        doc = json.loads(raw)
        if doc.get("v") != 1:
            raise InvalidArgument(f"unsupported reveal record version {doc.get('v')!r}")
        return cls(
            round_id=doc["round_id"],
            state=RevealState(doc["state"]),
            reason=doc["reason"],
            deadline_unix=float(doc["deadline_unix"]),
            spec=doc["spec"].encode(),
            cohort_size=int(doc["cohort_size"]),
            cohort_digest=bytes.fromhex(doc["cohort_digest"]),
            sum_sha256=bytes.fromhex(doc["sum_sha256"]),
            revealed_unix=float(doc["revealed_unix"]),
        )


class ResultStore:
    """``<data_dir>/reveal/``: a record per round and, once revealed, its sum (uint64 LE).

    Files are written whole (temporary file, fsync, rename) and mode 0600; the sum is
    written before the record that names its SHA-256, and read back only if it matches.
    """

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        self.directory = Path(data_dir) / RESULTS_DIR
        if create:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    @classmethod
    def open(cls, data_dir: Path) -> ResultStore:
        """The store of an existing data directory, to read (the operator's command);
        :class:`NotFound` if the party never revealed anything."""
        store = cls(data_dir, create=False)
        if not store.directory.is_dir():
            raise NotFound(f"{store.directory} does not exist: this party revealed nothing")
        return store

    def _path(self, round_id: str, suffix: str) -> Path:
        return self.directory / f"{round_id}.{suffix}"

    def read(self, round_id: str) -> RevealRecord | None:
        """The reveal record of ``round_id``, or None if there is none."""
        path = self._path(round_id, "json")
        return RevealRecord.from_json(path.read_bytes()) if path.exists() else None

    def write(self, record: RevealRecord, total: RingVector | None = None) -> RevealRecord:
        """Write ``record`` (and ``total``, the sum, first, with its SHA-256 in the record),
        each atomically and 0600; returns the record as written.
        """
        if total is not None:
            raw = to_bytes(np.ascontiguousarray(total, dtype=DTYPE)).tobytes()
            write_atomic(self._path(record.round_id, "sum"), raw, 0o600)
            record = replace(record, sum_sha256=hashlib.sha256(raw).digest())
        write_atomic(self._path(record.round_id, "json"), record.to_json(), 0o600)
        return record

    def revealed_sum(self, record: RevealRecord) -> RingVector:
        """The sum of a REVEALED record; :class:`InvalidArgument` if its file does not
        match the record's digest."""
        raw = self._path(record.round_id, "sum").read_bytes()
        if hashlib.sha256(raw).digest() != record.sum_sha256:
            raise InvalidArgument(f"the revealed sum of round {record.round_id!r} is corrupt")
        return np.frombuffer(raw, dtype=DTYPE).copy()

    def delete(self, round_id: str) -> None:
        """Delete the round's sum and record, if present."""
        for suffix in ("sum", "json"):
            self._path(round_id, suffix).unlink(missing_ok=True)
