"""The leader's close, on real aggregators and storage with in-process peers.

Peers are :class:`Aggregator` objects behind a small adapter, so faults (a peer
that is down for a while) and restarts (a new aggregator on the same data
directory) can be staged exactly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc.digest import payload_digest
from mpcagg.mpc.engines import NumpyEngine
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import InvalidArgument, NotFound, Unavailable
from mpcagg.protocol.spec import Holding, RoundSpec, TensorSpec, cohort_digest
from mpcagg.protocol.state import Manifest, RoundState, ShareKind, UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.leader import Leader
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import UploadSession

N = 3
LENGTH = 8
SHARING = b"s" * 16


class FakePeer:
    """A PeerClient stand-in calling another party's aggregator directly."""

    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg
        self.party = agg.party
        self.down = False
        self.commits = 0

    def _check(self) -> None:
        if self.down:
            raise Unavailable(f"party {self.party} unreachable")

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        self._check()
        return self.agg.manifest(round_id, spec_digest)

    def commit(
        self, round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec: bytes
    ) -> None:
        self._check()
        self.commits += 1
        self.agg.commit(round_id, cohort, digest)

    def fail(self, round_id: str, reason: str) -> None:
        self._check()
        self.agg.fail(round_id, reason)


def _aggregator(root: Path, party: int) -> Aggregator:
    agg = Aggregator(party, N, Storage(root / f"p{party}"), NumpyEngine(), Limits())
    agg.recover()
    return agg


def _seed(sharing: bytes, client: str, index: int) -> bytes:
    """A distinctive seed per sharing, client and party (searchable on disk)."""
    return hashlib.sha256(b"seed" + sharing + client.encode() + bytes([index])).digest()


def _upload(
    aggs: list[Aggregator],
    spec: RoundSpec,
    client: str,
    value: int,
    to: set[int],
    sharing: bytes = SHARING,
) -> None:
    encoded = np.full(LENGTH, value, dtype=np.uint64)
    shares = mpc.share(
        encoded,
        N,
        mpc.full_party_for(client, N),
        [mpc.Seed(_seed(sharing, client, i)) for i in range(N - 1)],
        mpc.SharingContext(spec.round_id, client),
    )
    for s in shares:
        if s.party not in to:
            continue
        if isinstance(s, mpc.SeedShare):
            seed = s.seed.expose()
            header = UploadHeader(
                spec.round_id, client, sharing, s.party, ShareKind.SEED, LENGTH,
                payload_digest(seed), seed,
            )  # fmt: skip
            session = aggs[s.party].begin_upload(header)
        else:
            raw = s.vector.tobytes()
            header = UploadHeader(
                spec.round_id, client, sharing, s.party, ShareKind.FULL, LENGTH,
                payload_digest(raw),
            )  # fmt: skip
            session = aggs[s.party].begin_upload(header)
            assert isinstance(session, UploadSession)
            session.add_chunk(raw)
        assert isinstance(session, UploadSession)
        session.finish()


def _revealed(aggs: list[Aggregator], round_id: str) -> np.ndarray:
    total = np.zeros(LENGTH, dtype=np.uint64)
    for a in aggs:
        total += a.aggregate_share(round_id)[1]
    return total


@pytest.fixture
def spec() -> RoundSpec:
    return RoundSpec("r", (TensorSpec("w", (LENGTH,)),), N, min_clients=2, max_clients=10)


def test_intersection_is_the_cohort(tmp_path: Path, spec: RoundSpec) -> None:
    aggs = [_aggregator(tmp_path, p) for p in range(N)]
    for a in aggs:
        a.create_round(spec)
    _upload(aggs, spec, "a", 1, {0, 1, 2})
    _upload(aggs, spec, "b", 2, {0, 1, 2})
    _upload(aggs, spec, "c", 4, {0, 1})  # missed party 2
    leader = Leader(aggs[0], [FakePeer(a) for a in aggs[1:]])  # type: ignore[list-item]
    status = leader.close("r")
    assert status.state is RoundState.COMMITTED and status.cohort_size == 2
    assert (_revealed(aggs, "r") == 3).all()


def test_close_resumes_after_a_peer_outage_and_a_leader_restart(
    tmp_path: Path, spec: RoundSpec
) -> None:
    aggs = [_aggregator(tmp_path, p) for p in range(N)]
    for a in aggs:
        a.create_round(spec)
    for i, client in enumerate(["a", "b", "c"]):
        _upload(aggs, spec, client, 1 << i, {0, 1, 2})
    peers = [FakePeer(a) for a in aggs[1:]]
    peers[1].down = True  # party 2 is down before the manifests
    leader = Leader(aggs[0], peers)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="party 2"):
        leader.close("r")
    assert all(a.status("r").state is not RoundState.COMMITTED for a in aggs)

    # Party 2 is back for the manifests, but goes down before its commit: the leader
    # has recorded the cohort, party 1 has committed, party 2 has not.
    peers[1].down = False
    original_commit = peers[1].commit

    def fail_commit(*args: object) -> None:
        peers[1].down = True
        original_commit(*args)  # type: ignore[arg-type]

    peers[1].commit = fail_commit  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        leader.close("r")
    assert aggs[1].status("r").state is RoundState.COMMITTED
    assert aggs[0].status("r").state is RoundState.CLOSING  # the leader commits last

    # The leader restarts: a new aggregator on the same data directory, a new Leader.
    aggs[0].storage.close()
    aggs[0] = _aggregator(tmp_path, 0)
    peers[1] = FakePeer(aggs[2])
    leader = Leader(aggs[0], peers)  # type: ignore[arg-type]
    leader.tick()  # resumes the interrupted close by itself
    status = aggs[0].status("r")
    assert status.state is RoundState.COMMITTED
    assert status.cohort_digest == cohort_digest(Holding(c, SHARING) for c in ("a", "b", "c"))
    assert {a.status("r").cohort_digest for a in aggs} == {status.cohort_digest}
    assert (_revealed(aggs, "r") == 7).all()
    assert leader.close("r").state is RoundState.COMMITTED  # idempotent


def test_below_min_clients_fails_everywhere(tmp_path: Path, spec: RoundSpec) -> None:
    aggs = [_aggregator(tmp_path, p) for p in range(N)]
    for a in aggs:
        a.create_round(spec)
    _upload(aggs, spec, "a", 1, {0, 1, 2})
    _upload(aggs, spec, "b", 2, {0, 1})
    leader = Leader(aggs[0], [FakePeer(a) for a in aggs[1:]])  # type: ignore[list-item]
    status = leader.close("r")
    assert status.state is RoundState.FAILED and "below min_clients" in status.reason
    assert all(a.status("r").state is RoundState.FAILED for a in aggs)
    leftovers = [f for p in range(N) for f in (tmp_path / f"p{p}" / "spool" / "r").glob("*")]
    assert leftovers == [], "a failed round keeps no shares on disk"


def test_each_server_refuses_a_round_below_its_minimum_cohort(tmp_path: Path) -> None:
    agg = _aggregator(tmp_path, 1)  # default limits: min_cohort = 2
    with pytest.raises(InvalidArgument, match=r"min_clients 1 is below this server's minimum"):
        agg.create_round(RoundSpec("tiny", (TensorSpec("w", (LENGTH,)),), N, min_clients=1))
    with pytest.raises(NotFound):
        agg.status("tiny")
