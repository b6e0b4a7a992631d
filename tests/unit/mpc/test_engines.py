"""The numpy engine (mpc.engines.numpy_engine) and engine selection.

CrypTen's engine has its own tests.
"""

from __future__ import annotations

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.engines import ENGINE_NAMES, NumpyEngine, get_engine
from mpcagg.mpc.engines.numpy_engine import _ADD_CHUNK
from mpcagg.mpc.sharing import FullShare, SeedShare

CTX = mpc.SharingContext(round_id="round-1", client_id="client-1")


def seed(tag: int) -> mpc.Seed:
    return mpc.Seed(bytes([tag]) * 32)


def ramp(length: int, step: int = 0x9E3779B97F4A7C15) -> np.ndarray:
    return np.arange(length, dtype=np.uint64) * np.uint64(step)


def test_get_engine_numpy_is_the_default() -> None:
    engine = get_engine()
    assert isinstance(engine, NumpyEngine)
    assert engine.name == "numpy"
    assert isinstance(get_engine("numpy"), NumpyEngine)
    assert isinstance(engine, mpc.Engine)
    assert ENGINE_NAMES == ("numpy", "crypten")


def test_get_engine_refuses_unknown_names() -> None:
    with pytest.raises(mpc.ParameterError, match=r"numpy, crypten; got 'torch'"):
        get_engine("torch")


def test_zeros() -> None:
    acc = NumpyEngine().zeros(4)
    assert acc.dtype == np.dtype("<u8")
    assert acc.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("length", [0, 1, 5, _ADD_CHUNK - 1, _ADD_CHUNK, _ADD_CHUNK + 1])
def test_accumulate_full_share_wraps_and_is_in_place(length: int) -> None:
    engine = NumpyEngine()
    start = np.full(length, 2**64 - 3, dtype=np.uint64)
    vec = ramp(length)
    acc = start.copy()
    out = engine.accumulate(acc, FullShare(party=0, vector=vec))
    assert out is acc
    np.testing.assert_array_equal(acc, start + vec)
    out = engine.subtract(acc, FullShare(party=0, vector=vec))
    assert out is acc
    np.testing.assert_array_equal(acc, start)


@pytest.mark.parametrize("length", [0, 1, prg.CHUNK_ELEMENTS + 1])
def test_accumulate_seed_share_adds_its_expansion(length: int) -> None:
    engine = NumpyEngine()
    share = SeedShare(party=2, length=length, seed=seed(7), context=CTX)
    stream = prg.expand(seed(7), CTX.prg_context(2), length)
    start = ramp(length, 3)
    acc = engine.accumulate(start.copy(), share)
    np.testing.assert_array_equal(acc, start + stream)
    acc = engine.subtract(acc, share)
    np.testing.assert_array_equal(acc, start)
    acc = engine.subtract(acc, share)
    np.testing.assert_array_equal(acc, start - stream)


def test_accumulate_refuses_length_mismatch_for_both_share_kinds() -> None:
    engine = NumpyEngine()
    acc = engine.zeros(3)
    with pytest.raises(mpc.LengthError, match="length 3 does not match expected length 4"):
        engine.accumulate(acc, FullShare(party=0, vector=np.ones(4, dtype=np.uint64)))
    with pytest.raises(mpc.LengthError, match="length 3 does not match expected length 2"):
        engine.accumulate(acc, SeedShare(party=1, length=2, seed=seed(1), context=CTX))
    with pytest.raises(mpc.LengthError):
        engine.subtract(acc, FullShare(party=0, vector=np.ones(2, dtype=np.uint64)))
    assert acc.tolist() == [0, 0, 0]


def test_to_ring_and_from_ring() -> None:
    engine = NumpyEngine()
    vec = ramp(5)
    acc = engine.from_ring(vec)
    np.testing.assert_array_equal(acc, vec)
    assert not np.shares_memory(acc, vec)
    engine.accumulate(acc, FullShare(party=0, vector=np.ones(5, dtype=np.uint64)))
    np.testing.assert_array_equal(vec, ramp(5))
    np.testing.assert_array_equal(engine.to_ring(acc), vec + np.uint64(1))


def test_from_ring_of_read_only_bytes_gives_a_writable_accumulator() -> None:
    vec = mpc.ring.from_bytes(bytes(range(16)))
    acc = NumpyEngine().from_ring(vec)
    assert acc.flags.writeable
    NumpyEngine().accumulate(acc, FullShare(party=0, vector=np.ones(2, dtype=np.uint64)))


def test_reconstruct_sums_aggregate_shares_mod_2_64() -> None:
    engine = NumpyEngine()
    parts = [np.array([2**64 - 1, 5], dtype=np.uint64), np.array([2, 2**64 - 5], dtype=np.uint64)]
    assert engine.reconstruct(parts).tolist() == [1, 0]
    with pytest.raises(ValueError, match="zero aggregate shares"):
        engine.reconstruct([])
    with pytest.raises(mpc.LengthError):
        engine.reconstruct([np.zeros(2, dtype=np.uint64), np.zeros(3, dtype=np.uint64)])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_aggregation_of_several_clients_reveals_only_the_sum(n: int) -> None:
    engine = NumpyEngine()
    length = 9
    inputs = [ramp(length, 2**63 + 7 * c + 1) for c in range(4)]
    accs = [engine.zeros(length) for _ in range(n)]
    for c, x in enumerate(inputs):
        ctx = mpc.SharingContext(round_id="r", client_id=f"client-{c}")
        full = mpc.full_party_for(ctx.client_id, n)
        seeds = [mpc.Seed(bytes([c, i]) * 16) for i in range(n - 1)]
        for party, s in enumerate(mpc.share(x, n, full, seeds, ctx)):
            assert s.party == party
            engine.accumulate(accs[party], s)
    expected = sum(inputs[1:], inputs[0].copy())
    np.testing.assert_array_equal(engine.reconstruct([engine.to_ring(a) for a in accs]), expected)
    # No single party's aggregate share equals the sum.
    assert all(not np.array_equal(a, expected) for a in accs)
