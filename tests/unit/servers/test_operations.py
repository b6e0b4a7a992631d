"""Audit records, committed aggregates served from disk, abort, retention and store
versions, on in-process parties (real aggregators, storage and party keys)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mpcagg.ops.credentials import provision_dev
from mpcagg.protocol.admin import RoundSummary
from mpcagg.protocol.cluster import Retention
from mpcagg.protocol.errors import ConfigError, NotFound, RoundNotOpen
from mpcagg.protocol.state import RoundState
from mpcagg.servers import schema
from mpcagg.servers.admin import AdminService
from mpcagg.servers.audit import AUDIT_FILE, fingerprint, read_certificates, read_lines, verify
from mpcagg.servers.inventory import Inventory
from mpcagg.servers.retention import DAY, Janitor, plan
from mpcagg.servers.storage import Storage
from tests.unit.servers.party_rig import Parties, parties


@pytest.fixture
def rig(tmp_path: Path) -> Parties:
    r = parties(tmp_path)
    yield r  # type: ignore[misc]
    r.close_all()


def _commit(rig: Parties, round_id: str, values: dict[str, int]) -> None:
    spec = rig.open(round_id)
    for client, value in values.items():
        rig.upload(spec, client, value)
    assert rig.leader is not None
    assert rig.leader.close(round_id).state is RoundState.COMMITTED


# --- committed aggregates live on disk ---------------------------------------------------


def test_committed_aggregates_are_served_from_their_file(rig: Parties) -> None:
    _commit(rig, "r", {"a": 1, "b": 2})
    for agg in rig.aggs:
        assert agg.get("r").accumulator is None, "a committed aggregate stayed in memory"
        _, share = agg.aggregate_share("r")
        assert isinstance(share, np.memmap), type(share)
    assert (rig.revealed("r") == 3).all()
    rig.restart(1)
    assert rig.aggs[1].get("r").accumulator is None, "recovery loaded the aggregate"
    assert (rig.revealed("r") == 3).all()


# --- the audit log ---------------------------------------------------------------------


def _check(rig: Parties, party: int, **kw: object) -> object:
    data = rig.data_dir(party)
    certs = read_certificates(data)
    return verify(read_lines(data), certs, party=party, ca_pem=rig.creds.ca_cert.read_bytes(), **kw)  # type: ignore[arg-type]


def test_each_party_signs_a_chained_record_per_finished_round(rig: Parties) -> None:
    _commit(rig, "r1", {"a": 1, "b": 2})
    spec = rig.open("r2")
    rig.aggs[0].fail("r2", "test")
    assert rig.leader is not None
    rig.leader.close("r2")  # tells the peers
    for party in range(3):
        lines = read_lines(rig.data_dir(party))
        first, second = (json.loads(line) for line in lines)
        assert (first["round_id"], first["state"], second["state"]) == ("r1", "COMMITTED", "FAILED")
        assert second["prev"] == hashlib.sha256(lines[0]).hexdigest()
        status = rig.aggs[party].status("r1")
        assert first["cohort_digest"] == status.cohort_digest.hex() and first["cohort_size"] == 2
        assert first["spec_digest"] == status.spec_digest.hex()
        aggregate = (rig.data_dir(party) / "spool" / "r1" / "aggregate.bin").read_bytes()
        assert first["aggregate_digest"] == hashlib.sha256(aggregate).hexdigest()
        assert second["aggregate_digest"] == "" and second["spec_digest"] == spec.digest.hex()
        assert first["created_at"] <= first["finished_at"] and first["closed_at"] is not None
        cert = rig.creds.parties[party].cert.read_bytes()
        assert first["signer"] == fingerprint(cert)
        check = _check(rig, party)
        assert check.ok and check.signed == 2, check.describe()  # type: ignore[attr-defined]


def test_verification_fails_for_an_edited_dropped_or_foreign_record(rig: Parties) -> None:
    _commit(rig, "r1", {"a": 1})
    _commit(rig, "r2", {"a": 1, "b": 1})
    path = rig.data_dir(1) / AUDIT_FILE
    original = path.read_bytes()
    first, second = original.splitlines()
    edited = first.replace(b'"cohort_size":1', b'"cohort_size":5')
    assert edited != first
    path.write_bytes(edited + b"\n" + second + b"\n")
    problems = _check(rig, 1).problems  # type: ignore[attr-defined]
    assert any("signature does not match" in p for p in problems), problems
    assert any("record 2" in p and "does not link" in p for p in problems), problems
    path.write_bytes(second + b"\n")
    assert not _check(rig, 1).ok  # type: ignore[attr-defined]
    path.write_bytes(original)
    assert _check(rig, 1).ok  # type: ignore[attr-defined]
    # Party 1's log is not party 2's, and another CA's certificate signs nothing here.
    assert not _check(rig, 1, require_signatures=True).problems  # type: ignore[attr-defined]
    wrong_party = verify(read_lines(rig.data_dir(1)), read_certificates(rig.data_dir(1)), party=2)
    assert any("not 2" in p for p in wrong_party.problems)
    other = provision_dev(rig.root / "other", 1, hosts=("127.0.0.1",))
    foreign = verify(
        read_lines(rig.data_dir(1)),
        read_certificates(rig.data_dir(1)),
        party=1,
        ca_pem=other.ca_cert.read_bytes(),
    )
    assert any("not issued by the cluster CA" in p for p in foreign.problems)


def test_missing_records_are_written_at_start_and_a_torn_one_dropped(rig: Parties) -> None:
    _commit(rig, "r1", {"a": 1})
    path = rig.data_dir(2) / AUDIT_FILE
    path.write_bytes(b'{"torn":')  # the crash came before the first record was complete
    agg = rig.restart(2)
    with Inventory(rig.data_dir(2), 2) as inventory:
        written = rig.audits[2].reconcile(inventory, agg.storage.read_aggregate)
    assert written == 1
    lines = read_lines(rig.data_dir(2))
    assert [json.loads(line)["round_id"] for line in lines] == ["r1"]
    assert _check(rig, 2).ok  # type: ignore[attr-defined]


def test_a_failing_observer_never_breaks_a_commit(rig: Parties) -> None:
    def boom(*_: object) -> None:
        raise OSError("disk full")

    rig.audits[1].committed = boom  # type: ignore[method-assign]
    _commit(rig, "r", {"a": 4})
    assert (rig.revealed("r") == 4).all()


# --- abort --------------------------------------------------------------------------------


def _admin(rig: Parties) -> AdminService:
    assert rig.leader is not None
    return AdminService(
        rig.aggs[0], rig.leader, Janitor(rig.aggs[0], Retention(), rig.leader), rig.audits[0]
    )


def test_abort_fails_an_open_round_everywhere(rig: Parties) -> None:
    spec = rig.open("r")
    rig.upload(spec, "a", 1)
    rig.peers[1].down = True  # party 2 misses the Fail: the leader keeps telling it
    reply = _admin(rig).AbortRound(SimpleNamespace(round_id="r", reason="stuck"), None)
    assert "aborted by the operator: stuck" in reply.reason
    assert [a.status("r").state for a in rig.aggs[:2]] == [RoundState.FAILED] * 2
    assert rig.aggs[2].status("r").state is RoundState.OPEN
    assert rig.leader is not None and rig.leader.pending_failures() == {"r": {2}}
    rig.peers[1].down = False
    rig.leader.close("r")
    assert rig.aggs[2].status("r").state is RoundState.FAILED
    for agg in rig.aggs:
        with pytest.raises(RoundNotOpen):
            agg.aggregate_share("r")


def test_abort_is_refused_once_the_cohort_is_decided(rig: Parties) -> None:
    spec = rig.open("r")
    rig.upload(spec, "a", 1)
    rig.peers[1].down_on_commit = True
    assert rig.leader is not None
    with pytest.raises(Exception, match="went down"):
        rig.leader.close("r")
    assert rig.aggs[1].status("r").state is RoundState.COMMITTED  # already holds its share
    with pytest.raises(RoundNotOpen, match="decided its cohort"):
        _admin(rig).AbortRound(SimpleNamespace(round_id="r", reason=""), None)
    assert rig.aggs[0].status("r").state is RoundState.CLOSING
    rig.peers[1].down_on_commit = False
    assert rig.leader.close("r").state is RoundState.COMMITTED


# --- retention ------------------------------------------------------------------------------


def _summary(
    rid: str,
    state: RoundState,
    created: float,
    finished: float | None = None,
    deadline: float = 0.0,
) -> RoundSummary:
    return RoundSummary(
        rid, 0, state, "", b"", 0, b"", 0, 0, 0, 0, created, None, finished, deadline
    )


def test_plan_keeps_rounds_by_count_and_age_and_fails_abandoned_ones() -> None:
    now = 100 * DAY
    rounds = [
        _summary("old", RoundState.COMMITTED, 1 * DAY, 2 * DAY),
        _summary("mid", RoundState.FAILED, 90 * DAY, 90 * DAY),
        _summary("new", RoundState.COMMITTED, 99 * DAY, 99 * DAY),
        _summary("stale", RoundState.OPEN, 50 * DAY),
        _summary("due", RoundState.OPEN, 50 * DAY, deadline=60 * DAY),  # the leader closes it
        _summary("fresh", RoundState.OPEN, 99 * DAY),
        _summary("stuck", RoundState.CLOSING, 10 * DAY),
    ]
    decided = {d.round_id: d for d in plan(rounds, Retention(keep_days=30), now)}
    assert set(decided) == {"old", "stale"}
    assert decided["old"].action == "prune" and decided["stale"].action == "fail"
    by_count = {d.round_id for d in plan(rounds, Retention(keep_rounds=1, keep_days=0), now)}
    assert by_count == {"old", "mid", "stale"}
    assert plan(rounds, Retention(keep_days=0, open_max_age_days=0), now) == []
    protected = plan(rounds, Retention(keep_rounds=1, keep_days=0), now, frozenset({"mid"}))
    assert "mid" not in {d.round_id for d in protected}


def test_janitor_prunes_rows_and_files_and_fails_abandoned_rounds(rig: Parties) -> None:
    _commit(rig, "done", {"a": 1})
    spec = rig.open("abandoned")
    rig.upload(spec, "a", 1)
    rig.clock[0] += 8 * DAY  # past open_max_age_days (7), not keep_days (30)
    assert rig.leader is not None
    janitor = Janitor(rig.aggs[0], Retention(), rig.leader)
    done = janitor.run_once()
    assert [(d.round_id, d.action) for d in done] == [("abandoned", "fail")]
    assert all(a.status("abandoned").state is RoundState.FAILED for a in rig.aggs)
    rig.clock[0] += 31 * DAY
    for party, agg in enumerate(rig.aggs):
        leader = rig.leader if party == 0 else None
        pruned = Janitor(agg, Retention(), leader).run_once()
        assert sorted(d.round_id for d in pruned) == ["abandoned", "done"]
        assert not (rig.data_dir(party) / "spool" / "done").exists()
        with pytest.raises(NotFound):
            agg.get("done")
        with Inventory(rig.data_dir(party)) as inventory:
            assert inventory.rounds() == []
        assert len(read_lines(rig.data_dir(party))) == 2, "audit records are never pruned"
    rig.restart(1)  # nothing comes back
    with pytest.raises(NotFound):
        rig.aggs[1].get("done")


def test_dry_run_changes_nothing(rig: Parties) -> None:
    _commit(rig, "done", {"a": 1})
    rig.clock[0] += 31 * DAY
    decisions = Janitor(rig.aggs[1], Retention()).run_once(dry_run=True)
    assert [d.round_id for d in decisions] == ["done"]
    assert rig.aggs[1].status("done").state is RoundState.COMMITTED


# --- store versions ------------------------------------------------------------------------


def test_a_store_from_a_newer_mpcagg_is_refused(tmp_path: Path) -> None:
    Storage(tmp_path / "d").close()
    db = sqlite3.connect(tmp_path / "d" / "meta.sqlite3")
    db.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"schema version \d+, written by a newer mpcagg"):
        Storage(tmp_path / "d")
    with pytest.raises(ConfigError, match="written by a newer mpcagg"):
        Inventory(tmp_path / "d")


def test_a_store_from_before_versions_is_migrated(tmp_path: Path) -> None:
    from mpcagg.servers.storage import _SCHEMA

    (tmp_path / "d").mkdir()
    db = sqlite3.connect(tmp_path / "d" / "meta.sqlite3")
    db.executescript(_SCHEMA)  # the layout before versions: user_version 0
    db.execute(
        "INSERT INTO rounds (round_id, spec, spec_digest, state, created_at) "
        "VALUES ('old', x'', x'', 'FAILED', 1.0)"
    )
    db.commit()
    db.close()
    storage = Storage(tmp_path / "d")
    try:
        assert [r.round_id for r in storage.rounds()] == ["old"]
    finally:
        storage.close()
    db = sqlite3.connect(tmp_path / "d" / "meta.sqlite3")  # what the file now says
    try:
        assert schema.stored_version(db) == schema.SCHEMA_VERSION
    finally:
        db.close()
