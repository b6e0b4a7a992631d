"""Property tests: sharing round-trips, aggregation is homomorphic, encodings never wrap."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mpcagg.mpc as mpc
from mpcagg.mpc.engines import NumpyEngine

TOP = 2**64 - 1
INT63 = 2**63 - 1
SETTINGS = settings(deadline=None, max_examples=150)

ring_values = st.one_of(
    st.integers(0, TOP),
    st.integers(TOP - 1000, TOP),  # near 2^64: sums wrap
    st.sampled_from([0, 1, 2**63 - 1, 2**63, TOP]),
)
seeds = st.binary(min_size=32, max_size=32).map(mpc.Seed)
ids = st.text(max_size=12)


@st.composite
def sharing_case(draw: st.DrawFn) -> tuple[list[int], int, int, list[mpc.Seed], str, str]:
    n = draw(st.integers(2, 7))
    values = draw(st.lists(ring_values, max_size=40))
    full = draw(st.integers(0, n - 1))
    drawn = draw(st.lists(seeds, min_size=n - 1, max_size=n - 1))
    return values, n, full, drawn, draw(ids), draw(ids)


def vector(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64).reshape(-1)


@SETTINGS
@given(sharing_case())
@example(([], 2, 0, [mpc.Seed(bytes(32))], "", ""))
@example(([TOP], 7, 6, [mpc.Seed(bytes([i]) * 32) for i in range(6)], "r", "c"))
def test_reconstruct_of_share_is_identity(
    case: tuple[list[int], int, int, list[mpc.Seed], str, str],
) -> None:
    values, n, full, drawn, round_id, client_id = case
    x = vector(values)
    ctx = mpc.SharingContext(round_id=round_id, client_id=client_id)
    shares = mpc.share(x, n, full, drawn, ctx)
    assert len(shares) == n
    assert [s.party for s in shares] == list(range(n))
    assert all(s.length == len(values) for s in shares)
    assert mpc.reconstruct(shares).tolist() == values


@st.composite
def aggregation_case(draw: st.DrawFn) -> tuple[int, list[list[int]], list[list[mpc.Seed]]]:
    n = draw(st.integers(2, 7))
    length = draw(st.integers(0, 24))
    clients = draw(st.integers(1, 5))
    inputs = [draw(st.lists(ring_values, min_size=length, max_size=length)) for _ in range(clients)]
    drawn = [draw(st.lists(seeds, min_size=n - 1, max_size=n - 1)) for _ in range(clients)]
    return n, inputs, drawn


@SETTINGS
@given(aggregation_case())
@example((3, [[TOP] * 4] * 5, [[mpc.Seed(bytes([c, p]) * 16) for p in range(2)] for c in range(5)]))
def test_sum_of_party_aggregates_is_sum_of_inputs_mod_2_64(
    case: tuple[int, list[list[int]], list[list[mpc.Seed]]],
) -> None:
    n, inputs, drawn = case
    length = len(inputs[0])
    engine = NumpyEngine()
    accs = [engine.zeros(length) for _ in range(n)]
    for c, (values, client_seeds) in enumerate(zip(inputs, drawn, strict=True)):
        ctx = mpc.SharingContext(round_id="round", client_id=f"client-{c}")
        full = mpc.full_party_for(ctx.client_id, n)
        for s in mpc.share(vector(values), n, full, client_seeds, ctx):
            engine.accumulate(accs[s.party], s)
    revealed = engine.reconstruct([engine.to_ring(a) for a in accs])
    expected = [sum(col) % 2**64 for col in zip(*inputs, strict=True)]
    assert revealed.tolist() == expected


@SETTINGS
@given(
    st.integers(0, 52),
    st.lists(st.floats(-1.0e6, 1.0e6, allow_nan=False, allow_infinity=False), max_size=30),
)
def test_encode_is_trunc_and_decode_inverts_it(precision: int, values: list[float]) -> None:
    values = [v for v in values if abs(v) * 2.0**precision < 2.0**62]
    fp = mpc.FixedPoint(precision)
    encoded = fp.encode(np.array(values, dtype=np.float64))
    expected = [math.trunc(v * 2**precision) for v in values]
    assert encoded.view(np.int64).tolist() == expected
    decoded = fp.decode(encoded)
    assert all(abs(d - v) < 2.0**-precision for d, v in zip(decoded, values, strict=True))


@SETTINGS
@given(
    st.integers(1, 2**40),
    st.integers(0, 52),
    st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=8),
)
def test_inputs_within_max_bound_never_wrap(
    clients: int, precision: int, fractions: list[float]
) -> None:
    bound = mpc.max_bound(clients, precision)
    assert mpc.max_clients_for_bound(bound, precision) >= clients
    fp = mpc.FixedPoint(precision)
    encoded = fp.encode(np.array(fractions) * bound, bound=bound).view(np.int64).tolist()
    # `clients` copies of the largest-magnitude input stay inside the signed range.
    peak = max(abs(e) for e in encoded)
    assert clients * peak <= INT63
    assert peak <= fp.encoded_bound(bound)
