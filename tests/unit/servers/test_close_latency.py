"""The leader asks the parties at once: a close costs one party's disk latency, not the
sum of them (manifests and commits each make a party write durably)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.protocol.state import RoundState
from mpcagg.servers.leader import Leader
from tests.unit.servers.test_cohort import LENGTH, FakePeer, N, _aggregator, _upload

SLOW_S = 0.3


class SlowPeer(FakePeer):
    """A peer whose every manifest and commit takes ``SLOW_S`` (a slow disk)."""

    def manifest(self, round_id: str, spec_digest: bytes):  # type: ignore[no-untyped-def]
        threading.Event().wait(SLOW_S)
        return super().manifest(round_id, spec_digest)

    def commit(self, round_id, cohort, digest, spec):  # type: ignore[no-untyped-def]
        threading.Event().wait(SLOW_S)
        super().commit(round_id, cohort, digest, spec)


def test_peers_are_asked_at_once(tmp_path: Path) -> None:
    spec = RoundSpec("r", (TensorSpec("w", (LENGTH,)),), N, min_clients=2, max_clients=10)
    aggs = [_aggregator(tmp_path, p) for p in range(N)]
    for a in aggs:
        a.create_round(spec)
    for client, value in (("a", 1), ("b", 2)):
        _upload(aggs, spec, client, value, set(range(N)))
    leader = Leader(aggs[0], [SlowPeer(a) for a in aggs[1:]])  # type: ignore[list-item]
    started = time.monotonic()
    assert leader.close("r").state is RoundState.COMMITTED
    # Two peers, a manifest and a commit each: 4 × SLOW_S one after the other.
    assert time.monotonic() - started < 3 * SLOW_S
