"""Reveal mode ``servers`` among in-process parties over mutual TLS (servers/reveal.py).

Each party is a real server (create_server) on 127.0.0.1 with its own certificate; the
group's messages travel over the parties' peer ports. Checked: the parties reveal the
ring sum of the cohort bit for bit with the crypten engine and the numpy engine alike
(a dropout left out), each keeps it in its data directory, where the operator's
command reads it; a group that cannot form fails cleanly within the reveal window
and keeps nothing; a party that restarts after the others revealed reveals again
(they join its new group).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mpcagg.ops.reveal import read_result
from mpcagg.protocol.errors import RoundNotOpen
from mpcagg.protocol.group import RevealState
from mpcagg.protocol.state import RoundState
from mpcagg.servers.results import ResultStore
from tests.crypten_world import crypten_world_of_one
from tests.unit.servers.group_rig import TlsCluster, exact_inputs, ring_sum

pytestmark = pytest.mark.timeout(180)
D = 300


@pytest.fixture(scope="module")
def crypten_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with crypten_world_of_one(tmp_path_factory.mktemp("crypten-world")):
        yield


def _revealed_at_every_party(cluster: TlsCluster, round_id: str) -> list[np.ndarray]:
    sums = []
    for p in range(cluster.n):
        store = ResultStore.open(cluster.data_dir(p))
        record = store.read(round_id)
        assert record is not None and record.state is RevealState.REVEALED, record
        sums.append(store.revealed_sum(record))
    return sums


def _run_servers_round(cluster: TlsCluster, round_id: str) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(11)
    inputs = exact_inputs(rng, 3, D)
    spec = cluster.open(round_id, D, reveal="servers")
    cluster.submit(spec, inputs)
    cluster.upload_to(spec, "dropout", exact_inputs(rng, 1, D)[0], [0, 1])
    with cluster.collector() as c:
        assert c.close(round_id, wait_s=20).state is RoundState.COMMITTED
    states = cluster.wait_reveal(round_id, {RevealState.REVEALED})
    assert all(s.cohort_size == 3 for s in states)
    return _revealed_at_every_party(cluster, round_id), ring_sum(spec, inputs)


@pytest.mark.crypten
def test_crypten_parties_reveal_among_themselves_bit_identical_to_numpy(
    tmp_path: Path, crypten_world: None
) -> None:
    revealed = {}
    for engine in ("numpy", "crypten"):
        cluster = TlsCluster(tmp_path / engine, engine=engine)
        try:
            sums, expected = _run_servers_round(cluster, "together")
            for got in sums:
                np.testing.assert_array_equal(got, expected)
            revealed[engine] = sums[0]
            # The operator's view of its own party: decoded from its data directory.
            result = read_result(cluster.data_dir(2), 2, "together").result
            assert result is not None and result.cohort_size == 3
            np.testing.assert_array_equal(
                np.asarray(result.sum["w"]), expected.view(np.int64) / 65536.0
            )
        finally:
            cluster.stop_all()
    np.testing.assert_array_equal(revealed["crypten"], revealed["numpy"])


def test_a_group_that_cannot_form_fails_within_the_window_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    """Party 2 commits but never takes part (its revealer is stopped, then the party is
    down): parties 0 and 1 wait until their window closes, then fail with a reason that
    names party 2, and keep no sum; party 2, back later, fails too (the others refuse)."""
    window = 2.0
    cluster = TlsCluster(tmp_path / "c", reveal_timeout_s=window)
    try:
        rng = np.random.default_rng(5)
        spec = cluster.open("no-group", 16, reveal="servers", trainers_may_fetch=True)
        cluster.submit(spec, exact_inputs(rng, 2, 16))
        revealer = cluster.servers[2].revealer
        assert revealer is not None
        revealer.stop()
        with cluster.collector() as c:
            assert c.close("no-group", wait_s=20).state is RoundState.COMMITTED
        started = time.monotonic()
        cluster.stop(2)
        states = {s.party: s for s in cluster.reveal_states("no-group")}
        assert states[2].state is RevealState.UNKNOWN  # down
        assert {states[0].state, states[1].state} == {RevealState.PENDING}
        failed = cluster.wait_reveal(
            "no-group", {RevealState.FAILED, RevealState.UNKNOWN}, timeout=window + 8
        )
        took = time.monotonic() - started
        assert took <= window + 5, took  # bounded by the window, not by retries piling up
        for status in failed[:2]:
            assert status.state is RevealState.FAILED
            assert "party 2" in status.reason, status.reason
            assert not (cluster.data_dir(status.party) / "reveal" / "no-group.sum").exists()
        with (
            pytest.raises(RoundNotOpen, match=r"not revealed at party 0 \(failed: "),
            cluster.trainer("t-0") as t,
        ):
            t.result(spec)
        # Party 2 returns: the others refuse its group (their reveal failed for good), so
        # it fails too, at once, and nothing is kept anywhere
        cluster.start(2)
        final = cluster.wait_reveal("no-group", {RevealState.FAILED}, timeout=window + 8)
        # (its window opened when the others' hellos first reached it, so it may have closed)
        reason = final[2].reason
        assert "failed at party" in reason or "window closed" in reason, final[2]
        for p in range(cluster.n):
            assert not (cluster.data_dir(p) / "reveal" / "no-group.sum").exists()
    finally:
        cluster.stop_all()


def test_a_party_that_restarts_after_the_others_revealed_reveals_again(tmp_path: Path) -> None:
    cluster = TlsCluster(tmp_path / "c", reveal_timeout_s=30.0)
    try:
        sums, expected = _run_servers_round(cluster, "again")
        # Party 2 crashed before it kept the sum: its record is PENDING, no sum file.
        cluster.stop(2)
        store = ResultStore(cluster.data_dir(2))
        record = store.read("again")
        assert record is not None
        (store.directory / "again.sum").unlink()
        store.write(replace(record, state=RevealState.PENDING, sum_sha256=b""))
        cluster.start(2)
        states = cluster.wait_reveal("again", {RevealState.REVEALED}, timeout=20)
        assert len(states) == 3
        np.testing.assert_array_equal(_revealed_at_every_party(cluster, "again")[2], expected)
        assert np.array_equal(sums[0], expected)
    finally:
        cluster.stop_all()
