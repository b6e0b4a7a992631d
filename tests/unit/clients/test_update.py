"""Updates held whole or streamed: the same bytes, the same digest, the same shares; a
streamed update is never kept for a resume, and resuming it takes the same tensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mpcagg import Collector, SecureAggregator
from mpcagg.clients.layout import TensorLayout
from mpcagg.clients.transport import RetryPolicy
from mpcagg.clients.update import Update
from mpcagg.mpc import FixedPoint, Seed, SharingContext
from mpcagg.mpc.ring import DTYPE
from mpcagg.mpc.sharing import full_share_chunks, full_share_chunks_from
from mpcagg.protocol.errors import InputError, UpdateConflict
from tests.unit.clients.fake_cluster import FakeCluster
from tests.unit.clients.inprocess import InProcessCluster

FP = FixedPoint(16)
BOUND = 100.0
SHAPES = {"a": (3, 5), "b": (7,), "c": (2, 2, 3)}  # 15 + 7 + 12 = 34 elements


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape) * 10).astype(np.float32 if name != "b" else np.float64)
        for name, shape in SHAPES.items()
    }


def _parts(tensors: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    layout = TensorLayout.from_tensors(tensors)
    return layout.arrays(tensors)


def _whole(tensors: dict[str, np.ndarray]) -> Update:
    vector = TensorLayout.from_tensors(tensors).flatten(tensors)
    return Update.whole(FP.encode(vector, bound=BOUND))


@pytest.mark.parametrize("chunk", [1, 4, 7, 15, 16, 34, 100])
def test_a_streamed_update_is_the_whole_one_piece_by_piece(chunk: int) -> None:
    tensors = _tensors(1)
    whole = _whole(tensors)
    streamed = Update.streamed(_parts(tensors), FP, BOUND, chunk_elements=chunk)
    assert whole.vector is not None and streamed.vector is None
    assert streamed.length == whole.length == 34 and streamed.digest == whole.digest
    out = np.empty(34, dtype=DTYPE)
    for start in range(0, 34, chunk):  # pieces that cross tensor boundaries
        stop = min(34, start + chunk)
        streamed.fill(start, stop, out[start:stop])
    assert np.array_equal(out, whole.vector)


def test_a_streamed_update_keeps_views_of_the_callers_arrays() -> None:
    tensors = _tensors(2)
    streamed = Update.streamed(_parts(tensors), FP, BOUND)
    tensors["b"][0] = 1.5  # what a training loop must not do during submit: it is read again
    out = np.empty(34, dtype=DTYPE)
    streamed.fill(0, 34, out)
    assert out[15] == FP.encode(np.array([1.5]))[0]


def test_a_value_that_cannot_be_encoded_is_named_by_tensor_and_index() -> None:
    tensors = _tensors(3)
    tensors["c"].reshape(-1)[9] = np.nan
    with pytest.raises(InputError, match=r"tensor 'c': value at index 9 is nan"):
        Update.streamed(_parts(tensors), FP, BOUND, chunk_elements=4)
    tensors = _tensors(3)
    tensors["b"][6] = 2 * BOUND
    with pytest.raises(InputError, match=r"tensor 'b': value at index 6 .* beyond"):
        Update.streamed(_parts(tensors), FP, BOUND, chunk_elements=5)


@pytest.mark.parametrize("chunk", [1, 5, 34, 64])
def test_full_share_chunks_from_pieces_equal_those_from_the_vector(chunk: int) -> None:
    tensors = _tensors(4)
    whole = _whole(tensors)
    assert whole.vector is not None
    streamed = Update.streamed(_parts(tensors), FP, BOUND, chunk_elements=3)
    seeds = [Seed(bytes([i]) * 32) for i in (1, 2)]
    ctx = SharingContext("r1", "alice")
    want = np.concatenate([p.copy() for p in full_share_chunks(whole.vector, 3, 1, seeds, ctx, 8)])
    got = full_share_chunks_from(streamed.fill, 34, 3, 1, seeds, ctx, chunk)
    assert np.array_equal(np.concatenate([p.copy() for p in got]), want)


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster(3)
    try:
        yield cluster
    finally:
        cluster.stop_all()


def test_a_streamed_update_is_not_kept_and_resuming_takes_the_tensors_again(
    fake: FakeCluster,
) -> None:
    tensors = _tensors(5)
    with Collector(fake.config, retry=RetryPolicy(attempts=1)) as col:
        spec = col.open_round("r1", tensors, min_clients=1, bound=BOUND)
    with SecureAggregator(fake.config, "carol", retry=RetryPolicy(attempts=1), progress=False) as t:
        t.stream_bytes = 0  # stream every update
        fake.parties[1].drop_next_acks = 1  # carol's seed at party 1: no full share yet
        receipt = t.submit(spec, tensors)
        assert not receipt.complete and sorted(receipt.unknown) == [1]
        with pytest.raises(InputError, match="pass the same tensors to resume"):
            t.resume(receipt)
        with pytest.raises(UpdateConflict):
            t.resume(receipt, _tensors(6))
        settled = t.resume(receipt, tensors)
    assert settled.complete and settled.sharing_id == receipt.sharing_id
    assert settled.duplicates == (1,)
    with Collector(fake.config) as col:
        assert col.close("r1", wait_s=5).cohort_size == 1
        result = col.result("r1", spec)
    for name, value in tensors.items():
        want = FP.decode(FP.encode(value, bound=BOUND)).reshape(value.shape)
        np.testing.assert_array_equal(result.sum[name], want)


def test_a_streamed_round_on_real_servers_sums_exactly(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path, chunk_bytes=64)  # several chunks per full share
    try:
        tensors = [_tensors(7), _tensors(8)]
        with Collector(cluster.config) as col:
            spec = col.open_round("r1", tensors[0], min_clients=2, bound=BOUND)
            for i, update in enumerate(tensors):
                with SecureAggregator(cluster.config, f"t{i}", progress=False) as t:
                    t.stream_bytes = 0
                    assert t.submit(spec, update).complete
            assert col.close("r1", wait_s=5).cohort_size == 2
            result = col.result("r1", spec)
    finally:
        cluster.stop_all()
    for name in SHAPES:
        want = sum(FP.decode(FP.encode(t[name], bound=BOUND)) for t in tensors)
        np.testing.assert_array_equal(result.sum[name].reshape(-1), want)
