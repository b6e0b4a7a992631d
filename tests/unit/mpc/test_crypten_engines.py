"""The numpy and CrypTen engines give bit-identical accumulators (hypothesis), across
the ring's wrap-around edges and across chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.engines import Engine
from tests.crypten_world import crypten_world_of_one

pytestmark = pytest.mark.crypten


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Engine]]:
    """The numpy engine and a single-party CrypTen engine (:mod:`tests.crypten_world`)."""
    with crypten_world_of_one(tmp_path_factory.mktemp("crypten-single")):
        yield mpc.get_engine("numpy"), mpc.get_engine("crypten")


WRAP_EDGES = [0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**64 - 2**16, 2**32]
MASK = (1 << 64) - 1


def _seed(*parts: object) -> mpc.Seed:
    return mpc.Seed(hashlib.sha256(repr(parts).encode()).digest())


def _run_engine(
    engine: Engine,
    clients: list[list[int]],
    n_parties: int,
    seeds: list[list[mpc.Seed]],
    dropped: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every party accumulates every client's share, then subtracts client ``dropped``."""
    length = len(clients[0])
    accs = [engine.zeros(length) for _ in range(n_parties)]
    all_shares = []
    for c, values in enumerate(clients):
        ctx = mpc.SharingContext(round_id="round-7", client_id=f"client-{c}")
        full = mpc.full_party_for(ctx.client_id, n_parties)
        vec = np.array(values, dtype=np.uint64)
        shares = mpc.share(vec, n_parties, full, seeds[c], ctx)
        assert {type(s) for s in shares} == {mpc.FullShare, mpc.SeedShare}
        all_shares.append(shares)
        for p in range(n_parties):
            accs[p] = engine.accumulate(accs[p], shares[p])
    for p in range(n_parties):
        accs[p] = engine.subtract(accs[p], all_shares[dropped][p])
    rings = [engine.to_ring(a).copy() for a in accs]
    return rings, engine.reconstruct(accs)


ring_element = st.one_of(st.sampled_from(WRAP_EDGES), st.integers(0, MASK))


@st.composite
def aggregation_cases(draw: st.DrawFn) -> tuple[list[list[int]], int, list[list[mpc.Seed]], int]:
    n_parties = draw(st.integers(3, 5))
    n_clients = draw(st.integers(1, 4))
    length = draw(st.integers(0, 40))
    clients = [
        draw(st.lists(ring_element, min_size=length, max_size=length)) for _ in range(n_clients)
    ]
    raw = st.binary(min_size=mpc.SEED_BYTES, max_size=mpc.SEED_BYTES)
    seeds = [[mpc.Seed(draw(raw)) for _ in range(n_parties - 1)] for _ in range(n_clients)]
    dropped = draw(st.integers(0, n_clients - 1))
    return clients, n_parties, seeds, dropped


@settings(max_examples=40, deadline=None)
@given(case=aggregation_cases())
def test_engines_are_bit_identical(engines: tuple[Engine, Engine], case: Any) -> None:
    clients, n_parties, seeds, dropped = case
    numpy_engine, crypten_engine = engines
    np_rings, np_total = _run_engine(numpy_engine, clients, n_parties, seeds, dropped)
    ct_rings, ct_total = _run_engine(crypten_engine, clients, n_parties, seeds, dropped)
    for a, b in zip(np_rings, ct_rings, strict=True):
        assert a.dtype == b.dtype == np.uint64
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np_total, ct_total)
    kept = [c for i, c in enumerate(clients) if i != dropped]
    expected = (
        [sum(col) & MASK for col in zip(*kept, strict=True)] if kept else [0] * len(clients[0])
    )
    assert [int(v) for v in np_total] == expected


def test_engines_are_bit_identical_across_chunks(engines: tuple[Engine, Engine]) -> None:
    """A vector longer than several PRG and add chunks, with values that wrap."""
    length = 4 * prg.CHUNK_ELEMENTS + 12345
    rng = np.random.default_rng(4)
    clients = [rng.integers(0, 2**64, length, dtype=np.uint64, endpoint=False) for _ in range(3)]
    clients[0][:8] = WRAP_EDGES
    seeds = [[_seed(c, p) for p in range(2)] for c in range(3)]
    results = [
        _run_engine(engine, [c.tolist() for c in clients], 3, seeds, dropped=1)
        for engine in engines
    ]
    (np_rings, np_total), (ct_rings, ct_total) = results
    for a, b in zip(np_rings, ct_rings, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np_total, ct_total)
    np.testing.assert_array_equal(np_total, clients[0] + clients[2])  # uint64 wraps
