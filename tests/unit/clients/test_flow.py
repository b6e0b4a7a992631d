"""The client flow end to end: on three real parties in this process
(:class:`InProcessCluster`) where nothing is injected, and on the fake cluster of
:mod:`tests.unit.clients.fake_cluster` where a fault must be (lost acknowledgements,
parties down, disagreeing shares). Servers bind 127.0.0.1:0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mpcagg import (
    AlreadyExists,
    ClientCredentials,
    CloseTimeout,
    Collector,
    InputError,
    InvalidArgument,
    LayoutError,
    ProtocolError,
    RetryPolicy,
    RoundNotOpen,
    RoundState,
    RoundStateError,
    SecureAggregator,
    UpdateConflict,
    UploadFailed,
)
from mpcagg.mpc import FixedPoint, full_party_for
from mpcagg.ops.credentials import create_ca, issue_client_cert
from mpcagg.protocol.spec import Holding, RoundSpec, cohort_digest
from mpcagg.v1 import aggregation_pb2 as pb
from tests.unit.clients.fake_cluster import CHUNK, FakeCluster
from tests.unit.clients.inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def real(tmp_path: Path) -> Iterator[InProcessCluster]:
    """Three real parties in this process: for every test that injects no fault."""
    cluster = InProcessCluster(tmp_path)
    yield cluster
    cluster.stop_all()


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster(3)
    yield cluster
    cluster.stop_all()


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 3)


def trainer(
    cluster: FakeCluster | InProcessCluster, client_id: str | None, **kw: Any
) -> SecureAggregator:
    kw.setdefault("progress", False)
    return SecureAggregator(cluster.config, client_id, retry=FAST, **kw)


def collector(cluster: FakeCluster | InProcessCluster) -> Collector:
    return Collector(cluster.config, retry=FAST)


def expected_sum(models: list[torch.nn.Module], spec: RoundSpec) -> dict[str, np.ndarray]:
    fp = FixedPoint(spec.precision_bits)
    out: dict[str, np.ndarray] = {}
    for m in models:
        for name, p in m.named_parameters():
            decoded = fp.decode(fp.encode(p.detach().numpy(), bound=spec.bound)).reshape(p.shape)
            out[name] = out.get(name, 0) + decoded
    return out


def test_full_round(real: InProcessCluster) -> None:
    models = [model(i) for i in range(3)]
    with collector(real) as col:
        spec = col.open_round("r1", models[0].named_parameters(), min_clients=3, bound=10.0)
        assert spec.n_parties == 3 and spec.length == 18 and spec.bound == 10.0
        clients = ["alice", "bob", "dave"]
        held = []
        for cid, m in zip(clients, models, strict=True):
            with trainer(real, cid) as t:
                receipt = t.submit(spec, m.named_parameters())
            held.append(Holding(cid, bytes.fromhex(receipt.sharing_id)))
            assert receipt.complete and receipt.acknowledged == (0, 1, 2)
            assert receipt.round_id == "r1" and receipt.client_id == cid
            full = full_party_for(cid, 3)
            assert receipt.bytes_sent[full] > 18 * 8 > receipt.bytes_sent[(full + 1) % 3] > 32
            assert receipt.duration_s > 0 and len(receipt.sharing_id) == 32
        assert [s.received for s in col.status("r1")] == [3, 3, 3]

        final = col.close("r1", wait_s=5)
        assert final.state is RoundState.COMMITTED and final.cohort_size == 3
        assert {s.state for s in col.status("r1")} == {RoundState.COMMITTED}

        result = col.result("r1", spec)
        assert result.cohort_size == 3 and result.cohort_digest == cohort_digest(held)
        want = expected_sum(models, spec)
        for name in ("weight", "bias"):
            np.testing.assert_array_equal(result.sum[name], want[name])
            np.testing.assert_array_equal(result.mean[name], want[name] / 3)
            assert result.sum[name].dtype == np.float64
            assert not result.sum[name].flags.writeable
        plain = sum(m.weight.detach().double() for m in models)
        torch.testing.assert_close(result.as_torch("sum")["weight"], plain, atol=3 * 2**-16, rtol=0)
        assert result.as_torch()["bias"].dtype == torch.float64

        ring, size = col.aggregate_ring("r1")
        assert ring.dtype == np.uint64 and size == 3
        np.testing.assert_array_equal(
            FixedPoint(16).decode(ring), np.concatenate([want["weight"].ravel(), want["bias"]])
        )


def test_state_dict_and_gradients(real: InProcessCluster) -> None:
    m = model(7)
    m(torch.randn(4, 5)).pow(2).sum().backward()
    with collector(real) as col:
        spec = col.open_round("grads", m, min_clients=1)
        with trainer(real, "alice") as t:
            assert t.submit(spec, m.named_parameters(), use_grad=True).complete
        assert col.close("grads", wait_s=5).state is RoundState.COMMITTED
        result = col.result("grads", spec)
    fp = FixedPoint(16)
    grad = fp.decode(fp.encode(m.weight.grad.numpy())).reshape(3, 5)
    np.testing.assert_array_equal(result.sum["weight"], grad)


@pytest.mark.parametrize("failing", ["full", "seed"])
def test_retry_resends_identical_bytes_with_the_same_sharing_id(
    fake: FakeCluster, failing: str
) -> None:
    full = full_party_for("alice", 3)
    party = full if failing == "full" else (full + 1) % 3
    fake.parties[party].fail_next_uploads = 1
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
        with trainer(fake, "alice") as t:
            receipt = t.submit(spec, model(1).named_parameters())
    assert receipt.complete and receipt.acknowledged == (0, 1, 2)
    attempts = fake.parties[party].attempts
    assert len(attempts) == 2
    (h1, d1), (h2, d2) = attempts
    assert h1.SerializeToString() == h2.SerializeToString()
    assert d1 == d2
    assert (len(d1) == spec.length * 8) == (failing == "full")
    ids = {h.sharing_id for p in fake.parties for h, _ in p.attempts}
    assert ids == {bytes.fromhex(receipt.sharing_id)}
    if failing == "seed":  # one message: UploadWhole
        assert fake.parties[party].ways == ["whole", "whole"]
        one_attempt = pb.UploadRequest(header=h1).ByteSize()
    else:  # longer than one chunk: streamed
        assert fake.parties[party].ways == ["stream", "stream"]
        one_attempt = pb.UploadMessage(header=h1).ByteSize() + sum(
            pb.UploadMessage(chunk=d1[i : i + CHUNK]).ByteSize() for i in range(0, len(d1), CHUNK)
        )
    assert receipt.bytes_sent[party] == 2 * one_attempt


def test_a_party_without_upload_whole_is_sent_a_stream(fake: FakeCluster) -> None:
    """A server that predates ``UploadWhole`` answers UNIMPLEMENTED: the same upload is
    streamed to it instead, and the round sums exactly."""
    for party in fake.parties:
        party.streams_only = True
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
        with trainer(fake, "alice") as t:
            receipt = t.submit(spec, model(1).named_parameters())
        assert receipt.complete and receipt.acknowledged == (0, 1, 2)
        assert all(p.ways == ["stream"] for p in fake.parties)
        assert col.close("r1", wait_s=5).cohort_size == 1
        want = expected_sum([model(1)], spec)
        result = col.result("r1", spec)
        for name in ("weight", "bias"):
            np.testing.assert_array_equal(result.sum[name], want[name])


def test_lost_acknowledgement_is_acknowledged_again_as_duplicate(fake: FakeCluster) -> None:
    fake.parties[0].drop_next_acks = 1
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
        with trainer(fake, "bob") as t:
            receipt = t.submit(spec, model(1).named_parameters())
        assert receipt.complete and receipt.duplicates == (0,)
        assert len(fake.parties[0].attempts) == 2
        assert col.close("r1", wait_s=5).cohort_size == 1


def test_an_acknowledgement_lost_for_good_is_unknown_until_resumed(fake: FakeCluster) -> None:
    """The whole payload went out and no answer came: the receipt says "unknown", never
    "failed" (the party holds the share); resuming settles it as a duplicate. The full
    share waits for that seed: it is sent only by the resume."""
    assert full_party_for("carol", 3) == 2
    fake.parties[1].drop_next_acks = 1
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
        with SecureAggregator(
            fake.config, "carol", retry=RetryPolicy(attempts=1), progress=False
        ) as t:
            receipt = t.submit(spec, model(1).named_parameters())
            assert sorted(receipt.unknown) == [1] and list(receipt.failed) == [2]
            assert "not sent" in receipt.failed[2] and not fake.parties[2].attempts
            assert not receipt.complete and receipt.pending == (1, 2)
            settled = t.resume(receipt)
        assert settled.complete and settled.duplicates == (1,)
        assert settled.sharing_id == receipt.sharing_id
        assert col.close("r1", wait_s=5).cohort_size == 1


def test_an_acknowledgement_of_another_payload_is_refused(fake: FakeCluster) -> None:
    fake.parties[1].ack_wrong_digest = True
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
    with trainer(fake, "dave") as t, pytest.raises(ProtocolError, match="acknowledged another"):
        t.submit(spec, model(1).named_parameters())


def test_spec_mismatch_uploads_nothing(fake: FakeCluster) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    other = RoundSpec(round_id="r1", tensors=spec.tensors, n_parties=3, bound=5.0)
    fake.parties[1].rounds["r1"].spec = other
    with trainer(fake, "alice") as t, pytest.raises(ProtocolError, match="party 1 has"):
        t.submit(spec, model(1).named_parameters(), verify=True)
    assert all(not p.attempts for p in fake.parties)


def test_round_not_open_uploads_nothing(fake: FakeCluster) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    fake.parties[2].rounds["r1"].state = pb.CLOSING
    with trainer(fake, "alice") as t, pytest.raises(RoundStateError, match="party 2: CLOSING"):
        t.submit(spec, model(1).named_parameters(), verify=True)
    assert all(not p.attempts for p in fake.parties)


def test_unreachable_party_is_reported_and_close_times_out(fake: FakeCluster) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
        fake.stop(2)
        with trainer(fake, "alice") as t:  # its full share goes to party 2
            receipt = t.submit(spec, model(1).named_parameters())
        assert receipt.acknowledged == (0, 1) and not receipt.complete
        assert list(receipt.failed) == [2] and "UNAVAILABLE" in receipt.failed[2]
        assert receipt.bytes_sent[0] > 0 and receipt.bytes_sent[1] > 0
        status = col.status("r1")
        assert [s.state for s in status] == [RoundState.OPEN, RoundState.OPEN, RoundState.UNKNOWN]
        with pytest.raises(CloseTimeout, match="CLOSING \\(waiting for parties \\[2\\]\\)"):
            col.close("r1", wait_s=0.3)


def test_all_parties_down_raises_upload_failed(fake: FakeCluster) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    fake.stop_all()
    with trainer(fake, "alice") as t, pytest.raises(UploadFailed) as err:
        t.submit(spec, model(1).named_parameters())
    assert sorted(err.value.failures) == [0, 1, 2]


def test_invalid_argument_is_raised_with_the_server_message(fake: FakeCluster) -> None:
    message = "vector length 1000 does not match round spec (4096)"
    fake.parties[1].reject_uploads = message
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    with trainer(fake, "alice") as t, pytest.raises(InvalidArgument) as err:
        t.submit(spec, model(1).named_parameters())
    assert (err.value.party, err.value.code, err.value.server_message) == (
        1,
        "INVALID_ARGUMENT",
        message,
    )
    # A seed was refused, so the full share (party 2) is never sent.
    assert any("acknowledged by parties [0]; failed at [1, 2]" in n for n in err.value.__notes__)
    assert len(fake.parties[1].attempts) == 1  # not retried
    assert not fake.parties[2].attempts


def test_the_certificate_names_the_trainer_and_its_key_is_never_shown(
    fake: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Without TLS (the fake cluster) the certificate only names the client; no credential
    travels as metadata, and the key shows up in no repr or log line."""
    caplog.set_level(logging.DEBUG)
    fake.parties[0].fail_next_uploads = 1  # a retry gets logged
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    pair = issue_client_cert(create_ca(), "alice", "trainer")
    key_line = pair.key_pem.decode().splitlines()[1]
    with trainer(fake, None, cert=ClientCredentials(pair.cert_pem, pair.key_pem)) as t:
        assert t.client_id == "alice"
        assert key_line not in repr(t)
        t.submit(spec, model(1).named_parameters())
    assert {h.client_id for p in fake.parties for h, _ in p.attempts} == {"alice"}
    assert "retrying" in caplog.text and key_line not in caplog.text
    assert all("authorization" not in md for p in fake.parties for md in p.metadata)


def test_identical_resubmission_is_acknowledged_as_already_counted(real: InProcessCluster) -> None:
    with collector(real) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    with trainer(real, "alice") as t:
        first = t.submit(spec, model(1).named_parameters())
        again = t.submit(spec, model(1).named_parameters())  # the same sharing is reused
    assert first.complete and again.complete
    assert again.sharing_id == first.sharing_id
    assert again.duplicates == tuple(range(spec.n_parties)) and first.duplicates == ()


def test_a_different_update_for_a_shared_round_is_refused_before_sending(
    fake: FakeCluster,
) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    with trainer(fake, "alice") as t:
        t.submit(spec, model(1).named_parameters())
        before = [len(p.metadata) for p in fake.parties]
        with pytest.raises(UpdateConflict, match="different update"):
            t.submit(spec, model(2).named_parameters())
        assert [len(p.metadata) for p in fake.parties] == before  # nothing was sent


def test_round_failed_below_min_clients(real: InProcessCluster) -> None:
    with collector(real) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=2)
        with trainer(real, "alice") as t:
            t.submit(spec, model(1).named_parameters())
        final = col.close("r1", wait_s=5)
        assert final.state is RoundState.FAILED and "below min_clients" in final.reason
        with pytest.raises(RoundNotOpen, match=r"is FAILED .*expected COMMITTED"):
            col.result("r1", spec)


def test_open_round_is_idempotent_but_not_for_another_spec(real: InProcessCluster) -> None:
    with collector(real) as col:
        spec = col.open_round("r1", model(0).named_parameters())
        assert col.open_round("r1", model(0).named_parameters()) == spec
        with pytest.raises(AlreadyExists) as err:
            col.open_round("r1", model(0).named_parameters(), bound=5.0)
    assert err.value.code == "ALREADY_EXISTS"


def test_open_round_validates_parameters_locally(fake: FakeCluster) -> None:
    with collector(fake) as col:
        with pytest.raises(InputError, match="allows at most"):
            col.open_round("r1", model(0), bound=1e12, max_clients=10**6)
        with pytest.raises(InputError, match="deadline_s must be > 0"):
            col.open_round("r1", model(0), deadline_s=0)
        spec = col.open_round("r2", model(0), deadline_s=60)
        assert spec.deadline_unix > 0
    assert all("r1" not in p.rounds for p in fake.parties)


def test_disagreeing_aggregate_shares_are_refused(fake: FakeCluster) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), min_clients=1)
        with trainer(fake, "alice") as t:
            t.submit(spec, model(1).named_parameters())
        col.close("r1", wait_s=5)
        fake.parties[1].rounds["r1"].cohort_digest = b"\x00" * 32
        with pytest.raises(ProtocolError, match="do not agree"):
            col.result("r1", spec)


def test_progress_bar_on_stderr(real: InProcessCluster, capsys: pytest.CaptureFixture[str]) -> None:
    with collector(real) as col:
        spec = col.open_round("r1", model(0).named_parameters())
    with trainer(real, "alice", progress=True) as t:
        t.submit(spec, model(1).named_parameters())
    assert "upload r1" in capsys.readouterr().err


def test_bad_input_is_refused_before_anything_is_sent(fake: FakeCluster) -> None:
    with collector(fake) as col:
        spec = col.open_round("r1", model(0).named_parameters(), bound=1.0)
    for p in fake.parties:
        p.metadata.clear()
    m = model(1)
    with torch.no_grad():
        m.bias[2] = 3.0
    with trainer(fake, "alice") as t:
        with pytest.raises(InputError, match=r"tensor 'bias': value at index 2 is 3\.0, beyond"):
            t.submit(spec, m.named_parameters())
        with pytest.raises(LayoutError, match="missing \\['bias'\\]"):
            t.submit(spec, {"weight": m.weight})
    assert all(not p.metadata and not p.attempts for p in fake.parties)
