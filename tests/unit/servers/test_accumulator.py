"""The durable accumulator: group commit, checkpoints, recovery, and the rule that a
folded full share cannot be left out of the cohort. Each test fails when its guard goes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc.digest import payload_digest
from mpcagg.protocol.errors import InvalidArgument, Unavailable
from mpcagg.protocol.spec import Holding, RoundSpec, TensorSpec, cohort_digest
from mpcagg.protocol.state import RoundState, ShareKind, UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.leader import Leader
from mpcagg.servers.upload import UploadSession
from tests.unit.servers.test_cohort import LENGTH, SHARING, FakePeer, N, _aggregator, _revealed

VALUE = np.arange(LENGTH, dtype=np.uint64) + np.uint64(1)


@pytest.fixture
def spec() -> RoundSpec:
    return RoundSpec("r", (TensorSpec("w", (LENGTH,)),), N, min_clients=2, max_clients=100)


def _fold(agg: Aggregator, client: str, vector: np.ndarray, sharing: bytes = SHARING) -> None:
    raw = vector.tobytes()
    header = UploadHeader(
        "r", client, sharing, agg.party, ShareKind.FULL, LENGTH, payload_digest(raw),
        seeds_acknowledged=True,
    )  # fmt: skip
    session = agg.begin_upload(header)
    assert isinstance(session, UploadSession)
    session.add_chunk(raw)
    session.finish()


def _restart(tmp_path: Path, agg: Aggregator) -> Aggregator:
    agg.storage.close()
    return _aggregator(tmp_path, agg.party)


def test_concurrent_uploads_share_checkpoints(tmp_path: Path, spec: RoundSpec) -> None:
    """Uploads that finish while a batch is being written form the next batch: far fewer
    checkpoints than uploads, each upload acknowledged once its batch is durable."""
    agg = _aggregator(tmp_path, 0)
    agg.create_round(spec)
    original = agg.storage.record_uploads
    batches: list[int] = []

    def slow(rows, checkpoint):  # type: ignore[no-untyped-def]
        batches.append(len(rows))
        threading.Event().wait(0.05)  # a slow disk
        original(rows, checkpoint)

    agg.storage.record_uploads = slow  # type: ignore[method-assign]
    clients = [f"c{k}" for k in range(16)]
    threads = [threading.Thread(target=_fold, args=(agg, c, VALUE)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert agg.status("r").received == 16
    assert sum(batches) == 16 and len(batches) <= 8, batches
    ingest = agg.get("r").ingest
    assert ingest is not None and ingest.checkpoints_written == len(batches)
    assert np.array_equal(ingest.vector, VALUE * np.uint64(16))


def test_a_restart_resumes_from_the_last_checkpoint(tmp_path: Path, spec: RoundSpec) -> None:
    agg = _aggregator(tmp_path, 0)
    agg.create_round(spec)
    for k in range(3):
        _fold(agg, f"c{k}", VALUE)
    agg = _restart(tmp_path, agg)
    assert agg.status("r").received == 3
    ingest = agg.get("r").ingest
    assert ingest is not None and np.array_equal(ingest.vector, VALUE * np.uint64(3))
    _fold(agg, "c3", VALUE)  # and keeps folding on top of it
    assert np.array_equal(agg.get("r").ingest.vector, VALUE * np.uint64(4))  # type: ignore[union-attr]


def test_a_checkpoint_written_but_not_recorded_is_discarded(
    tmp_path: Path, spec: RoundSpec
) -> None:
    """A crash between writing the slot and committing its rows: the upload was never
    acknowledged, so after the restart it is not held and not counted (its retry is)."""
    agg = _aggregator(tmp_path, 0)
    agg.create_round(spec)
    _fold(agg, "c0", VALUE)

    def crash(rows, checkpoint):  # type: ignore[no-untyped-def]
        raise OSError("power lost")

    agg.storage.record_uploads = crash  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="send it again"):
        _fold(agg, "c1", VALUE)
    assert np.array_equal(agg.get("r").ingest.vector, VALUE)  # type: ignore[union-attr]
    agg = _restart(tmp_path, agg)
    assert agg.status("r").received == 1
    assert sorted(p.name for p in agg.storage.spool_dir("r").iterdir()) == ["acc-0.bin"]
    _fold(agg, "c1", VALUE)  # the retry
    assert np.array_equal(agg.get("r").ingest.vector, VALUE * np.uint64(2))  # type: ignore[union-attr]


def test_a_damaged_checkpoint_stops_the_server(tmp_path: Path, spec: RoundSpec) -> None:
    agg = _aggregator(tmp_path, 0)
    agg.create_round(spec)
    _fold(agg, "c0", VALUE)
    agg.storage.close()
    path = tmp_path / "p0" / "spool" / "r" / "acc-0.bin"
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        _aggregator(tmp_path, 0)


def _cluster(tmp_path: Path, spec: RoundSpec) -> tuple[list[Aggregator], Leader]:
    aggs = [_aggregator(tmp_path, p) for p in range(N)]
    for a in aggs:
        a.create_round(spec)
    return aggs, Leader(aggs[0], [FakePeer(a) for a in aggs[1:]])  # type: ignore[list-item]


def _share(aggs: list[Aggregator], client: str, value: int, to: set[int]) -> None:
    """Seeds first, the full share last and folded, as the trainer client does; only to
    the parties in ``to`` (a full party outside ``to`` gets nothing)."""
    full = mpc.full_party_for(client, N)
    seeds = [mpc.Seed.generate() for _ in range(N - 1)]
    shares = mpc.share(
        np.full(LENGTH, value, dtype=np.uint64), N, full, seeds, mpc.SharingContext("r", client)
    )
    for s in shares:
        if s.party not in to or s.party == full:
            continue
        assert isinstance(s, mpc.SeedShare)
        seed = s.seed.expose()
        header = UploadHeader(
            "r", client, SHARING, s.party, ShareKind.SEED, LENGTH, payload_digest(seed), seed
        )
        session = aggs[s.party].begin_upload(header)
        assert isinstance(session, UploadSession)
        session.finish()
    if full in to:
        vec = shares[full].expand()
        _fold(aggs[full], client, vec)


def test_seed_parties_leave_out_a_trainer_whose_full_share_never_came(
    tmp_path: Path, spec: RoundSpec
) -> None:
    aggs, leader = _cluster(tmp_path, spec)
    _share(aggs, "a", 1, set(range(N)))
    _share(aggs, "b", 2, set(range(N)))
    gone = "c"  # its seeds reached every other party, then it stopped
    _share(aggs, gone, 40, set(range(N)) - {mpc.full_party_for(gone, N)})
    status = leader.close("r")
    assert status.state is RoundState.COMMITTED and status.cohort_size == 2
    assert np.array_equal(_revealed(aggs, "r"), np.full(LENGTH, 3, dtype=np.uint64))


def test_a_folded_share_outside_the_cohort_fails_the_round(tmp_path: Path, spec: RoundSpec) -> None:
    """A trainer that bypasses the client and folds its full share while a seed party
    lacks its seed: the full party cannot take it out, so nothing may be revealed."""
    aggs, leader = _cluster(tmp_path, spec)
    _share(aggs, "a", 1, set(range(N)))
    cheat = "d"
    full = mpc.full_party_for(cheat, N)
    missing = next(p for p in range(N) if p != full)
    _share(aggs, cheat, 5, set(range(N)) - {missing})
    status = leader.close("r")
    assert status.state is RoundState.FAILED
    assert f"folded the full share of client {cheat!r}" in status.reason
    assert [a.status("r").state for a in aggs] == [RoundState.FAILED] * N


def test_a_party_refuses_a_cohort_without_its_folded_shares(
    tmp_path: Path, spec: RoundSpec
) -> None:
    """The same guard at the party, before anything changes (a leader that skips it)."""
    agg = _aggregator(tmp_path, 0)
    agg.create_round(spec)
    for client in "abc":
        _fold(agg, client, VALUE)
    cohort = (Holding("a", SHARING), Holding("b", SHARING))
    with pytest.raises(InvalidArgument, match="cannot be taken out"):
        agg.commit("r", cohort, cohort_digest(cohort))
    assert agg.status("r").state is RoundState.OPEN


def test_a_commit_that_fails_half_way_is_retried_exactly(tmp_path: Path, spec: RoundSpec) -> None:
    """The aggregate is computed in the accumulator's memory; a commit that fails after
    that (here: writing the aggregate) restores the last checkpoint, so the retry does
    not add the cohort's seeds a second time."""
    aggs, leader = _cluster(tmp_path, spec)
    for client, value in (("a", 1), ("b", 2), ("c", 4)):
        _share(aggs, client, value, set(range(N)))
    victim = aggs[1]
    original = victim.storage.write_aggregate
    calls: list[int] = []

    def fail_once(round_id: str, vector: np.ndarray) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")
        original(round_id, vector)

    victim.storage.write_aggregate = fail_once  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        leader.close("r")
    assert victim.status("r").state is RoundState.CLOSING
    assert leader.close("r").state is RoundState.COMMITTED
    assert np.array_equal(_revealed(aggs, "r"), np.full(LENGTH, 7, dtype=np.uint64))


def test_the_spare_checkpoint_goes_before_the_aggregate_is_written(
    tmp_path: Path, spec: RoundSpec
) -> None:
    """Disk O(d): two checkpoint slots while open, one slot and the aggregate at commit."""
    aggs, leader = _cluster(tmp_path, spec)
    for k in range(4):
        _share(aggs, f"c{k}", k, set(range(N)))
    seen: list[list[str]] = []
    for agg in aggs:
        original = agg.storage.write_aggregate

        def spy(round_id: str, vector: np.ndarray, agg=agg, original=original) -> None:  # type: ignore[no-untyped-def]
            seen.append(sorted(p.name for p in agg.storage.spool_dir(round_id).iterdir()))
            original(round_id, vector)

        agg.storage.write_aggregate = spy  # type: ignore[method-assign]
    assert leader.close("r").state is RoundState.COMMITTED
    folded = [s for s in seen if s]  # the full parties: at most one slot left
    assert folded and all(len([n for n in s if n.startswith("acc-")]) == 1 for s in folded)
