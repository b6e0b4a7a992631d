"""Who is counted: partial uploads, retries, conflicts, min_clients, malformed uploads.

One 3-party cluster serves the whole module; every test uses its own round ids.
Trainer ``k`` of a test uploads ``2^k`` in every coordinate, so the decoded sum is
a bit mask of exactly the trainers that were counted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mpcagg import (
    AlreadyExists,
    InvalidArgument,
    LayoutError,
    PermissionDenied,
    Receipt,
    RoundNotOpen,
    RoundState,
    RoundStateError,
    ServiceError,
)
from mpcagg.mpc import full_party_for
from mpcagg.protocol.spec import RoundSpec
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire import framing as wire
from tests.integration.conftest import (
    FAST_RETRY,
    NO_RETRY,
    Rig,
    closed_port,
    encode_all,
    eventually,
    exact_inputs,
    ring_sum,
)

LENGTH = 16
SHAPES = (("w", (LENGTH,)),)


def power(k: int, length: int = LENGTH) -> dict[str, np.ndarray]:
    return {"w": np.full(length, float(2**k))}


def encoded_power(spec: RoundSpec, k: int) -> np.ndarray:
    return spec.fixed_point.encode(power(k, spec.length)["w"], bound=spec.bound)


def counted(rig: Rig, spec: RoundSpec) -> set[int]:
    """The trainers ``k`` whose ``2^k`` the revealed sum covers (checked against the ring)."""
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    decoded = rig.collector.result(spec.round_id, spec).sum["w"]
    mask = int(decoded[0])
    np.testing.assert_array_equal(decoded, np.full(spec.length, float(mask)))
    members = {k for k in range(mask.bit_length()) if mask >> k & 1}
    expected_ring = spec.fixed_point.encode(np.full(spec.length, float(mask)), bound=spec.bound)
    np.testing.assert_array_equal(ring, expected_ring)
    assert cohort == len(members)
    return members


def test_trainer_reaching_only_two_servers_is_excluded(rig: Rig) -> None:
    spec = rig.open("partial", SHAPES, min_clients=2)
    # Trainer 1 sees a cluster whose party 2 listens nowhere: it reaches parties 0 and 1.
    config = rig.config
    broken = config.model_copy(
        update={
            "parties": [
                p.model_copy(update={"address": f"127.0.0.1:{closed_port()}"}) if p.id == 2 else p
                for p in config.parties
            ]
        }
    )
    assert rig.submit(spec, "partial-0", power(0)).complete
    receipt = rig.submit(spec, "partial-1", power(1), config=broken, retry=NO_RETRY)
    # Seeds first: party 2's seed fails, so the full share (party 0's) is never sent.
    assert full_party_for("partial-1", 3) == 0
    assert receipt.acknowledged == (1,)
    assert set(receipt.failed) == {0, 2} and "not sent" in receipt.failed[0]
    assert not receipt.complete
    assert rig.submit(spec, "partial-2", power(2)).complete
    # Trainer 3 reaches parties 1 and 2 only (not the leader), at the wire level.
    shares = rig.shares(spec.round_id, "partial-3", encoded_power(spec, 3))
    rig.upload(spec.round_id, "partial-3", shares, parties=[1, 2])

    received = {p: s.received for p, s in rig.status(spec.round_id).items()}
    assert received == {0: 2, 1: 4, 2: 3}
    info = rig.close(spec.round_id)
    assert info.state is RoundState.COMMITTED, info.reason
    assert info.cohort_size == 2
    assert counted(rig, spec) == {0, 2}


def test_identical_retry_is_counted_once(rig: Rig) -> None:
    spec = rig.open("retry-same", SHAPES, min_clients=2)
    shares = rig.shares(spec.round_id, "same-0", encoded_power(spec, 0))
    sharing_id = secrets.token_bytes(wire.SHARING_ID_BYTES)
    first = rig.upload(spec.round_id, "same-0", shares, range(3), sharing_id)
    again = rig.upload(spec.round_id, "same-0", shares, range(3), sharing_id)
    assert not any(ack.duplicate for ack in first.values())
    assert all(ack.duplicate for ack in again.values())
    assert {p: a.payload_digest for p, a in again.items()} == {
        p: a.payload_digest for p, a in first.items()
    }
    rig.submit(spec, "same-1", power(1))
    assert {s.received for s in rig.status(spec.round_id).values()} == {2}

    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    assert counted(rig, spec) == {0, 1}


def test_conflicting_retry_is_refused(rig: Rig) -> None:
    spec = rig.open("retry-conflict", SHAPES, min_clients=2)
    shares = rig.shares(spec.round_id, "conflict-0", encoded_power(spec, 0))
    sharing_id = secrets.token_bytes(wire.SHARING_ID_BYTES)
    rig.upload(spec.round_id, "conflict-0", shares, range(3), sharing_id)

    # Same sharing id, other payload (another value, fresh seeds): refused by every party.
    other = rig.shares(spec.round_id, "conflict-0", encoded_power(spec, 4))
    for party in range(3):
        with pytest.raises(AlreadyExists) as refused:
            rig.upload(spec.round_id, "conflict-0", other, [party], sharing_id)
        assert refused.value.code == "ALREADY_EXISTS"
        assert refused.value.party == party
    # Same payload under another sharing id: also a different upload.
    with pytest.raises(AlreadyExists):
        rig.upload(spec.round_id, "conflict-0", shares, [0])
    # The trainer client re-sharing for the same client id is refused too.
    with pytest.raises(AlreadyExists):
        rig.submit(spec, "conflict-0", power(5))

    rig.submit(spec, "conflict-1", power(1))
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    assert counted(rig, spec) == {0, 1}


def test_below_min_clients_fails_and_reveals_nothing(rig: Rig) -> None:
    spec = rig.open("too-few", SHAPES, min_clients=3)
    rig.submit(spec, "few-0", power(0))
    rig.submit(spec, "few-1", power(1))
    # A third trainer reaching only the leader does not make the cohort.
    shares = rig.shares(spec.round_id, "few-2", encoded_power(spec, 2))
    rig.upload(spec.round_id, "few-2", shares, parties=[0])

    info = rig.close(spec.round_id)
    assert info.state is RoundState.FAILED
    assert "below min_clients" in info.reason and "2 clients" in info.reason, info.reason
    eventually(
        lambda: rig.all_in(spec.round_id, RoundState.FAILED),
        timeout=10,
        what="every party FAILED",
    )
    for party in range(3):
        error = rig.aggregate_share_error(party, spec.round_id)
        assert isinstance(error, RoundNotOpen), error
        assert error.code == "FAILED_PRECONDITION"
        assert rig.spool_files(party, spec.round_id) == []
    with pytest.raises(RoundNotOpen):
        rig.collector.aggregate_ring(spec.round_id)
    # Closing again keeps it FAILED; a late trainer is refused.
    assert rig.close(spec.round_id).state is RoundState.FAILED
    with pytest.raises(RoundStateError):
        rig.submit(spec, "few-3", power(3))


def test_wrong_vector_length_is_refused_and_nothing_stored(rig: Rig) -> None:
    spec = rig.open("bad-length", SHAPES, min_clients=1)
    longer = spec.fixed_point.encode(np.ones(LENGTH + 1))
    shares = rig.shares(spec.round_id, "long-0", longer)
    for party in range(3):
        with pytest.raises(InvalidArgument) as refused:
            rig.upload(spec.round_id, "long-0", shares, [party])
        assert refused.value.code == "INVALID_ARGUMENT"
        assert f"vector length {LENGTH + 1} does not match round spec ({LENGTH})" in str(
            refused.value
        )
    # The client library refuses a wrongly shaped tensor before sending anything.
    with pytest.raises(LayoutError):
        rig.submit(spec, "long-1", {"w": np.ones(LENGTH + 1)})

    assert {s.received for s in rig.status(spec.round_id).values()} == {0}
    for party in range(3):
        assert rig.spool_files(party, spec.round_id) == []
    # The refused client can still upload a correct share afterwards.
    assert rig.submit(spec, "long-0", power(2)).complete
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    assert counted(rig, spec) == {2}


def test_partial_stream_leaves_nothing_behind(rig: Rig) -> None:
    spec = rig.open("half-stream", (("w", (4096,)),), min_clients=1)
    client = "half-0"
    full_party = full_party_for(client, 3)
    encoded = spec.fixed_point.encode(np.full(spec.length, 8.0), bound=spec.bound)
    shares = rig.shares(spec.round_id, client, encoded)
    messages = list(
        wire.upload_messages(
            shares[full_party],
            round_id=spec.round_id,
            client_id=client,
            sharing_id=secrets.token_bytes(wire.SHARING_ID_BYTES),
            chunk_bytes=4096,
        )
    )
    assert len(messages) == 1 + 8  # header and 8 chunks of 512 elements
    transport = rig.transport(client)

    # The stream ends cleanly after 3 of 8 chunks.
    with pytest.raises(InvalidArgument, match="upload ended after 12288 bytes"):
        transport.upload(full_party, iter(messages[:4]))

    # The client breaks off mid-stream (the call is cancelled).
    def breaks_off() -> Iterator[pb.UploadMessage]:
        yield from messages[:5]
        raise ConnectionAbortedError("trainer stops mid-upload")

    with pytest.raises(ServiceError):
        transport.upload(full_party, breaks_off())

    def clean() -> bool:
        status = rig.status(spec.round_id)[full_party]
        return status.received == 0 and not rig.spool_files(full_party, spec.round_id)

    eventually(clean, timeout=10, what="no trace of the partial uploads")
    # Nothing is held for the client: its complete upload is new, not a duplicate or a conflict.
    retrying = rig.transport(client, retry=FAST_RETRY)
    ack = retrying.retrying(lambda: retrying.upload(full_party, iter(messages)))
    assert not ack.duplicate
    others = [p for p in range(3) if p != full_party]
    rig.upload(spec.round_id, client, shares, others, messages[0].header.sharing_id)
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    assert cohort == 1
    np.testing.assert_array_equal(ring, encoded)


def test_deadline_closes_the_round(rig: Rig) -> None:
    spec = rig.open("deadline", SHAPES, min_clients=2, deadline_s=2.0)
    too_few = rig.open("deadline-too-few", SHAPES, min_clients=2, deadline_s=2.0)
    rig.submit(spec, "late-0", power(0))
    rig.submit(spec, "late-1", power(1))
    rig.submit(too_few, "lone-0", power(0))
    statuses = eventually(
        lambda: rig.all_in(spec.round_id, RoundState.COMMITTED),
        timeout=20,
        interval=0.2,
        what="the leader to close the round at its deadline",
    )
    assert {i.cohort_size for i in statuses.values()} == {2}
    assert counted(rig, spec) == {0, 1}
    with pytest.raises(RoundStateError):
        rig.submit(spec, "late-2", power(2))

    failed = eventually(
        lambda: rig.all_in(too_few.round_id, RoundState.FAILED),
        timeout=10,
        interval=0.2,
        what="the leader to fail the under-populated round at its deadline",
    )
    assert "below min_clients" in failed[0].reason, failed[0].reason
    for party in range(3):
        assert isinstance(rig.aggregate_share_error(party, too_few.round_id), RoundNotOpen)


def test_200_concurrent_trainers_are_all_counted(rig: Rig) -> None:
    trainers = 200
    spec = rig.open(
        "crowd", (("w", (64,)),), min_clients=trainers, max_clients=trainers, deadline_s=None
    )
    rng = np.random.default_rng(200)
    inputs = exact_inputs(rng, trainers, spec.length)

    def submit(k: int) -> Receipt:
        return rig.submit(spec, f"crowd-{k:03d}", {"w": inputs[k]})

    with ThreadPoolExecutor(16, thread_name_prefix="trainer") as pool:
        receipts = list(pool.map(submit, range(trainers)))
    assert all(r.complete for r in receipts), [r.failed for r in receipts if not r.complete]
    assert {s.received for s in rig.status(spec.round_id).values()} == {trainers}

    info = rig.close(spec.round_id)
    assert info.state is RoundState.COMMITTED, info.reason
    assert info.cohort_size == trainers
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    assert cohort == trainers
    np.testing.assert_array_equal(ring, ring_sum(encode_all(spec, inputs), spec.length))
    result = rig.collector.result(spec.round_id, spec)
    np.testing.assert_array_equal(result.sum["w"], np.sum(inputs, axis=0))


def test_a_share_made_under_another_spec_is_refused(rig: Rig) -> None:
    spec = rig.open("other-spec", SHAPES, min_clients=1)
    # Same round id and layout, another bound: a server feeding the trainer this spec
    # would make it encode under numbers the other servers do not use.
    forged = RoundSpec(
        round_id=spec.round_id, tensors=spec.tensors, n_parties=spec.n_parties, bound=1.0
    )
    with pytest.raises(InvalidArgument, match="shared under spec digest"):
        rig.submit(forged, "forged-0", power(0))
    assert {s.received for s in rig.status(spec.round_id).values()} == {0}
    assert rig.submit(spec, "forged-0", power(0)).complete


def test_cohort_trainers_may_fetch_the_result_when_the_round_allows_it(rig: Rig) -> None:
    spec = rig.open("trainer-fetch", SHAPES, min_clients=2, trainers_may_fetch=True)
    for k in range(2):
        assert rig.submit(spec, f"fetch-{k}", power(k)).complete
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    with rig.trainer("fetch-1") as member:
        got = member.result(spec)
    want = rig.collector.result(spec.round_id, spec)
    assert got.cohort_size == 2 and np.array_equal(got.sum["w"], want.sum["w"])
    assert (got.sum["w"] == 3).all()
    with rig.trainer("outsider") as outsider, pytest.raises(PermissionDenied):
        outsider.result(spec)
