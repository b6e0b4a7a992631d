"""The guards behind "the sum is exact" and "nothing is kept": each test here fails
when its guard is removed (real aggregators and storage, in-process peers)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mpcagg.mpc.digest import payload_digest
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import ConfigError, InvalidArgument, RoundNotOpen
from mpcagg.protocol.spec import Holding, RoundSpec, TensorSpec, check_id, cohort_digest
from mpcagg.protocol.state import RoundState, ShareKind, UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.leader import RETRY_S, Leader
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import UploadSession
from tests.unit.servers.test_cohort import (
    LENGTH,
    SHARING,
    FakePeer,
    N,
    _aggregator,
    _revealed,
    _seed,
    _upload,
)

OTHER = b"o" * 16


@pytest.fixture
def spec() -> RoundSpec:
    return RoundSpec("r", (TensorSpec("w", (LENGTH,)),), N, min_clients=2, max_clients=10)


def _cluster(
    tmp_path: Path, spec: RoundSpec, monotonic: Callable[[], float] = time.monotonic
) -> tuple[list[Aggregator], list[FakePeer], Leader]:
    aggs = [_aggregator(tmp_path, p) for p in range(N)]
    for a in aggs:
        a.create_round(spec)
    peers = [FakePeer(a) for a in aggs[1:]]
    return aggs, peers, Leader(aggs[0], peers, monotonic=monotonic)  # type: ignore[arg-type]


def test_a_client_held_under_two_sharings_is_left_out(tmp_path: Path, spec: RoundSpec) -> None:
    """The retry after an outage: parties 0 and 2 hold the first sharing of "a", party 1
    a second one. Summing them would reveal garbage; the cohort leaves "a" out."""
    aggs, _, leader = _cluster(tmp_path, spec)
    _upload(aggs, spec, "a", 5, {0, 2}, sharing=SHARING)
    _upload(aggs, spec, "a", 5, {1}, sharing=OTHER)
    _upload(aggs, spec, "b", 2, {0, 1, 2})
    _upload(aggs, spec, "c", 3, {0, 1, 2})
    status = leader.close("r")
    assert status.state is RoundState.COMMITTED
    assert status.cohort_size == 2
    assert status.cohort_digest == cohort_digest([Holding("b", SHARING), Holding("c", SHARING)])
    assert (_revealed(aggs, "r") == 5).all()  # b + c, exactly


def test_commit_refuses_a_sharing_the_party_does_not_hold_and_changes_nothing(
    tmp_path: Path, spec: RoundSpec
) -> None:
    aggs, _, _ = _cluster(tmp_path, spec)
    _upload(aggs, spec, "a", 1, {0, 1, 2})
    _upload(aggs, spec, "b", 2, {0, 1, 2})
    cohort = (Holding("a", OTHER), Holding("b", SHARING))
    with pytest.raises(InvalidArgument, match="does not hold"):
        aggs[1].commit("r", cohort, cohort_digest(cohort))
    assert aggs[1].status("r").state is RoundState.OPEN  # refused before any state change
    _upload(aggs, spec, "c", 3, {1})  # and it still accepts uploads
    assert aggs[1].status("r").received == 3


def test_the_leader_retries_fail_until_every_peer_records_it(
    tmp_path: Path, spec: RoundSpec
) -> None:
    now = [0.0]
    aggs, peers, leader = _cluster(tmp_path, spec, monotonic=lambda: now[0])
    _upload(aggs, spec, "a", 1, {0, 1, 2})  # one client: below min_clients, the round fails
    original = peers[1].manifest

    def manifest_then_go_down(round_id: str, spec_digest: bytes):  # type: ignore[no-untyped-def]
        reply = original(round_id, spec_digest)
        peers[1].down = True  # answered the Manifest, down when the Fail comes
        return reply

    peers[1].manifest = manifest_then_go_down  # type: ignore[method-assign]
    assert leader.close("r").state is RoundState.FAILED
    assert aggs[2].status("r").state is RoundState.CLOSING
    held = [_seed(SHARING, "a", i) for i in range(N - 1)]
    assert any(_files_containing(tmp_path / "p2", s) for s in held), "party 2 keeps its share"
    assert leader.pending_failures() == {"r": {2}}

    leader.tick()  # party 2 still down: the Fail is retried, and missed again
    assert leader.pending_failures() == {"r": {2}}
    peers[1].down = False
    leader.tick()  # within the back-off: not retried yet
    assert aggs[2].status("r").state is RoundState.CLOSING
    now[0] += RETRY_S
    leader.tick()
    assert aggs[2].status("r").state is RoundState.FAILED
    assert not any(_files_containing(tmp_path / "p2", s) for s in held)
    assert leader.pending_failures() == {}


def test_a_peer_that_reports_the_round_failed_fails_it_everywhere(
    tmp_path: Path, spec: RoundSpec
) -> None:
    aggs, _, leader = _cluster(tmp_path, spec)
    for client, value in (("a", 1), ("b", 2)):
        _upload(aggs, spec, client, value, {0, 1, 2})
    aggs[2].fail("r", "disk lost")
    status = leader.close("r")
    assert status.state is RoundState.FAILED and "party 2 reports the round FAILED" in status.reason
    assert [a.status("r").state for a in aggs] == [RoundState.FAILED] * N
    with pytest.raises(RoundNotOpen):
        aggs[1].aggregate_share("r")


def _seed_session(agg: Aggregator, spec: RoundSpec, client: str) -> UploadSession:

    seed = _seed(SHARING, client, 0)
    header = UploadHeader(
        spec.round_id, client, SHARING, agg.party, ShareKind.SEED, LENGTH,
        payload_digest(seed), seed,
    )  # fmt: skip
    session = agg.begin_upload(header)
    assert isinstance(session, UploadSession)
    return session


def test_a_manifest_waits_for_an_upload_being_recorded(tmp_path: Path, spec: RoundSpec) -> None:
    """An upload acknowledged while the round closes must be in the manifest."""
    agg = _aggregator(tmp_path, 1)
    agg.create_round(spec)
    session = _seed_session(agg, spec, "a")
    recording, release = threading.Event(), threading.Event()
    original = agg.storage.record_uploads

    def slow_record(rows, checkpoint):  # type: ignore[no-untyped-def]
        recording.set()
        assert release.wait(10)
        original(rows, checkpoint)

    agg.storage.record_uploads = slow_record  # type: ignore[method-assign]
    acked: list[object] = []
    uploader = threading.Thread(target=lambda: acked.append(session.finish()))
    uploader.start()
    assert recording.wait(10)
    manifests: list[object] = []
    closer = threading.Thread(target=lambda: manifests.append(agg.manifest("r", spec.digest)))
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "the manifest must wait for the upload being recorded"
    release.set()
    uploader.join(10)
    closer.join(10)
    assert acked and manifests
    assert [h.client_id for h in manifests[0].held] == ["a"]  # type: ignore[attr-defined]


def test_an_upload_finishing_after_its_round_closed_is_refused(
    tmp_path: Path, spec: RoundSpec
) -> None:
    agg = _aggregator(tmp_path, 1)
    agg.create_round(spec)
    session = _seed_session(agg, spec, "late")
    agg.manifest("r", spec.digest)  # the round closes while the upload is in flight
    with pytest.raises(RoundNotOpen, match="CLOSING"):
        session.finish()
    session.abort()
    assert agg.storage.uploads("r") == []
    assert agg.status("r").received == 0


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


@pytest.mark.parametrize("outcome", ["commit", "fail"])
def test_no_seed_or_share_survives_a_decided_round_on_disk(
    tmp_path: Path, spec: RoundSpec, outcome: str
) -> None:
    aggs, _, leader = _cluster(tmp_path, spec)
    clients = ["a", "b"] if outcome == "commit" else ["a"]  # one client: below min_clients
    for i, client in enumerate(clients):
        _upload(aggs, spec, client, i + 1, {0, 1, 2})
    seeds = [_seed(SHARING, c, i) for c in clients for i in range(N - 1)]
    assert any(_files_containing(tmp_path, s) for s in seeds), "seeds are on disk while OPEN"
    status = leader.close("r")
    assert status.state is (RoundState.COMMITTED if outcome == "commit" else RoundState.FAILED)
    for s in seeds:  # database, WAL and spool files alike
        assert _files_containing(tmp_path, s) == []
    spooled = {p.name for p in tmp_path.rglob("spool/r/*")}
    assert spooled == ({"aggregate.bin"} if outcome == "commit" else set())


def test_every_commit_is_synchronous_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FULL: SQLite fsyncs the WAL at every commit, so an acknowledged row survives power
    loss. SQLite builds differ in their WAL default (FULL or NORMAL), so the server must
    ask for it: the statements the connection runs are traced."""
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):  # type: ignore[no-untyped-def]
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr("mpcagg.servers.storage.sqlite3.connect", traced)
    storage = Storage(tmp_path / "d")
    try:
        # Asked for, not inherited: this build's defaults may already be FULL and ON.
        assert {"PRAGMA synchronous=FULL", "PRAGMA secure_delete=ON"} <= set(statements)
        assert storage.durability() == {
            "journal_mode": "wal",
            "synchronous": "FULL",
            "secure_delete": True,
        }
    finally:
        storage.close()


def test_the_data_directory_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        storage = Storage(tmp_path / "d")
    finally:
        os.umask(old)
    storage.close()
    for path in (tmp_path / "d", tmp_path / "d" / "spool"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    first = Storage(tmp_path / "d")
    with pytest.raises(
        ConfigError, match=rf"in use by another mpcagg server \(pid {os.getpid()}\)"
    ):
        Storage(tmp_path / "d")
    first.close()
    Storage(tmp_path / "d").close()  # free again once the first one is gone


def test_ids_refuse_a_trailing_newline() -> None:
    assert check_id("client id", "alice") == "alice"
    with pytest.raises(InvalidArgument):
        check_id("client id", "alice\n")


def test_an_aggregate_is_only_over_the_committed_sharings(tmp_path: Path, spec: RoundSpec) -> None:
    """A party that holds an extra client subtracts it: its share covers the cohort alone."""
    aggs, _, leader = _cluster(tmp_path, spec)
    _upload(aggs, spec, "a", 1, {0, 1, 2})
    _upload(aggs, spec, "b", 2, {0, 1, 2})
    _upload(aggs, spec, "c", 40, {0, 2})  # missed party 1
    assert leader.close("r").cohort_size == 2
    assert np.array_equal(_revealed(aggs, "r"), np.full(LENGTH, 3, dtype=np.uint64))


def test_limits_default_caps_aggregate_streams() -> None:
    assert Limits().max_aggregate_streams < 16  # below the server's spare worker threads
