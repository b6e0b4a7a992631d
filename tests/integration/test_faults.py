"""Servers that die: acknowledged uploads survive SIGKILL, a close waits for a down peer.

The module shares one 3-party cluster; every test leaves all parties running.
"""

from __future__ import annotations

import secrets
import signal
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from mpcagg import CloseTimeout, RoundNotOpen, RoundState, RoundStateError, ServiceError
from mpcagg.mpc import full_party_for
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.spec import RoundSpec
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire import framing as wire
from tests.integration.conftest import (
    RPC_TIMEOUT_S,
    Rig,
    encode_all,
    eventually,
    exact_inputs,
    ring_sum,
)

SHAPES = (("w", (32,)),)


@pytest.fixture
def all_up(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """Restarts any party a test left down, so the next test finds all of them running."""
    yield cluster
    for party in range(cluster.n_parties):
        if not cluster.alive(party):
            cluster.start_party(party, timeout=60.0)


def one_full_share_per_party(prefix: str, n: int) -> list[str]:
    """``n`` client ids, the k-th of which sends its full share (not a seed) to party k."""
    ids: dict[int, str] = {}
    k = 0
    while len(ids) < n:
        cid = f"{prefix}-{k}"
        ids.setdefault(full_party_for(cid, n), cid)
        k += 1
    return [ids[p] for p in range(n)]


def expected(spec: RoundSpec, inputs: list[np.ndarray]) -> np.ndarray:
    return ring_sum(encode_all(spec, inputs), spec.length)


@pytest.mark.parametrize("victim", [0, 2], ids=["leader", "peer"])
def test_sigkill_after_acknowledged_uploads_loses_nothing(
    rig: Rig, all_up: LocalCluster, victim: int
) -> None:
    cluster = all_up
    spec = rig.open(f"sigkill-{victim}", SHAPES, min_clients=4)
    ids = one_full_share_per_party(f"kill{victim}", 3)
    inputs = exact_inputs(np.random.default_rng(victim), len(ids) + 1, spec.length)
    for cid, x in zip(ids[:-1], inputs, strict=False):
        assert rig.submit(spec, cid, {"w": x}).complete
    # The last one at the wire level, so it can retry byte-identically after the restart.
    raw = rig.shares(spec.round_id, ids[-1], encode_all(spec, [inputs[len(ids) - 1]])[0])
    sharing_id = secrets.token_bytes(wire.SHARING_ID_BYTES)
    acks = rig.upload(spec.round_id, ids[-1], raw, range(3), sharing_id)

    assert cluster.kill_party(victim, signal.SIGKILL) == -signal.SIGKILL
    cluster.start_party(victim, timeout=60.0)
    status = rig.status(spec.round_id)[victim]
    assert status.state is RoundState.OPEN
    assert status.received == len(ids)
    again = rig.upload(spec.round_id, ids[-1], raw, [victim], sharing_id)[victim]
    assert again.duplicate
    assert again.payload_digest == acks[victim].payload_digest

    # The restarted party keeps accumulating on top of what it recovered.
    assert rig.submit(spec, f"kill{victim}-after", {"w": inputs[-1]}).complete
    info = rig.close(spec.round_id)
    assert info.state is RoundState.COMMITTED, info.reason
    assert info.cohort_size == len(inputs)
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    assert cohort == len(inputs)
    np.testing.assert_array_equal(ring, expected(spec, inputs))

    # A committed round survives SIGKILL too: the same aggregate share is served again.
    cluster.kill_party(victim, signal.SIGKILL)
    cluster.start_party(victim, timeout=60.0)
    status = rig.status(spec.round_id)[victim]
    assert status.state is RoundState.COMMITTED
    assert status.cohort_size == len(inputs)
    assert rig.spool_files(victim, spec.round_id) == ["aggregate.bin"]
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    np.testing.assert_array_equal(ring, expected(spec, inputs))


def test_sigkill_mid_upload_leaves_no_trace(rig: Rig, all_up: LocalCluster) -> None:
    cluster = all_up
    spec = rig.open("mid-upload", (("w", (4096,)),), min_clients=1)
    client = one_full_share_per_party("mid", 3)[1]  # sends its full share to party 1
    encoded = spec.fixed_point.encode(np.full(spec.length, 3.0), bound=spec.bound)
    shares = rig.shares(spec.round_id, client, encoded)
    messages = list(
        wire.upload_messages(
            shares[1],
            round_id=spec.round_id,
            client_id=client,
            sharing_id=secrets.token_bytes(wire.SHARING_ID_BYTES),
            chunk_bytes=4096,
        )
    )
    release = threading.Event()

    def stalls() -> Iterator[pb.UploadMessage]:
        yield from messages[:3]
        release.wait(RPC_TIMEOUT_S)
        yield from messages[3:]

    outcome: dict[str, object] = {}

    def upload() -> None:
        try:
            outcome["ack"] = rig.transport(client).upload(1, stalls())
        except ServiceError as exc:
            outcome["error"] = exc

    uploader = threading.Thread(target=upload, name="stalled-upload")
    uploader.start()
    try:
        eventually(
            lambda: any(n.endswith(".tmp") for n in rig.spool_files(1, spec.round_id)),
            timeout=10,
            what="the upload to be spooling",
        )
        cluster.kill_party(1, signal.SIGKILL)
    finally:
        release.set()
        uploader.join(RPC_TIMEOUT_S + 5)
    assert not uploader.is_alive()
    assert isinstance(outcome.get("error"), ServiceError), outcome

    cluster.start_party(1, timeout=60.0)
    assert rig.status(spec.round_id)[1].received == 0
    assert rig.spool_files(1, spec.round_id) == []
    rig.upload(spec.round_id, client, shares, range(3))
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    assert cohort == 1
    np.testing.assert_array_equal(ring, encoded)


def test_close_with_a_peer_down_waits_and_reveals_nothing(rig: Rig, all_up: LocalCluster) -> None:
    cluster = all_up
    spec = rig.open("peer-down", SHAPES, min_clients=2)
    inputs = exact_inputs(np.random.default_rng(7), 3, spec.length)
    for k, x in enumerate(inputs):
        assert rig.submit(spec, f"down-{k}", {"w": x}).complete

    cluster.kill_party(2, signal.SIGKILL)
    with pytest.raises(CloseTimeout) as waited:
        rig.close(spec.round_id, wait_s=3.0)
    message = str(waited.value)
    assert "party 2" in message and "UNAVAILABLE" in message, message

    # Parties 0 and 1 stopped accepting uploads but reveal nothing with a partial cohort.
    statuses = rig.status(spec.round_id)
    assert statuses[2].state is RoundState.UNKNOWN
    for party in (0, 1):
        assert statuses[party].state is RoundState.CLOSING
        assert statuses[party].cohort_size == 0
        error = rig.aggregate_share_error(party, spec.round_id)
        assert isinstance(error, RoundNotOpen), error
    with pytest.raises(RoundStateError):
        rig.submit(spec, "down-late", {"w": inputs[0]})

    # The leader itself restarting in the middle changes nothing: it resumes CLOSING.
    cluster.kill_party(0, signal.SIGKILL)
    cluster.start_party(0, timeout=60.0)
    leader = rig.status(spec.round_id)[0]
    assert (leader.state, leader.received) == (RoundState.CLOSING, len(inputs))

    cluster.start_party(2, timeout=60.0)
    info = rig.close(spec.round_id, wait_s=20.0)
    assert info.state is RoundState.COMMITTED, info.reason
    statuses = eventually(
        lambda: rig.all_in(spec.round_id, RoundState.COMMITTED), timeout=10, what="all committed"
    )
    assert {s.cohort_size for s in statuses.values()} == {len(inputs)}
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    assert cohort == len(inputs)
    np.testing.assert_array_equal(ring, expected(spec, inputs))
    result = rig.collector.result(spec.round_id, spec)
    np.testing.assert_array_equal(result.sum["w"], np.sum(inputs, axis=0))
