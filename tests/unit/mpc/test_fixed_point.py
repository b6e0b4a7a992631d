"""Fixed-point encoding (mpc.fixed_point): truncation, refusals, bounds that never wrap."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc.fixed_point import (
    DEFAULT_PRECISION_BITS,
    FixedPoint,
    max_bound,
    max_clients_for_bound,
)

INT63 = (1 << 63) - 1


def signed(ring: np.ndarray) -> list[int]:
    return [int(v) for v in ring.view(np.int64)]


def test_default_precision_is_crypten_default() -> None:
    assert DEFAULT_PRECISION_BITS == 16
    assert FixedPoint().scale == 1 << 16


@pytest.mark.parametrize(
    ("precision", "values", "expected"),
    [
        (0, [1.7, -1.7, 2.5, -2.5, 0.999, -0.999, 0.0, -0.0], [1, -1, 2, -2, 0, 0, 0, 0]),
        # 1.5 ulp of the encoding truncates to 1 ulp, on both sides of zero.
        (16, [1.5 / 65536, -1.5 / 65536, 0.9 / 65536, -0.9 / 65536], [1, -1, 0, 0]),
        (16, [1.00001, -1.00001, 0.1, -0.1], [65536, -65536, 6553, -6553]),
        (8, [3.999, -3.999], [1023, -1023]),
    ],
)
def test_encode_truncates_toward_zero(
    precision: int, values: list[float], expected: list[int]
) -> None:
    out = FixedPoint(precision).encode(np.array(values))
    assert out.dtype == np.dtype("<u8")
    assert signed(out) == expected


@pytest.mark.parametrize("precision", [0, 8, 16, 32, 52])
def test_encode_equals_trunc_of_scaled_value(precision: int) -> None:
    values = np.linspace(-1000.0, 1000.0, 997) * math.pi
    values = values[np.abs(values) * 2.0**precision < 2.0**62]
    expected = [math.trunc(v * 2**precision) for v in values.tolist()]
    assert signed(FixedPoint(precision).encode(values)) == expected


def test_negative_values_are_twos_complement_ring_elements() -> None:
    out = FixedPoint(16).encode(np.array([-1.0, 1.0]))
    assert [int(v) for v in out] == [(1 << 64) - 65536, 65536]


def test_encode_flattens_and_accepts_float32_and_integers() -> None:
    fp = FixedPoint(16)
    matrix = np.array([[0.25, -0.5], [1.0, 2.0]], dtype=np.float32)
    assert signed(fp.encode(matrix)) == [16384, -32768, 65536, 131072]
    f32 = np.array([0.1], dtype=np.float32)
    # float32(0.1) is not 0.1: the encoding is of the float32 value, as CrypTen does it.
    assert signed(fp.encode(f32)) == [math.trunc(float(f32[0]) * 65536)]
    assert signed(fp.encode(np.array([3, -4], dtype=np.int32))) == [3 * 65536, -4 * 65536]


def test_encode_of_empty_input_is_empty() -> None:
    out = FixedPoint().encode(np.array([], dtype=np.float64))
    assert out.shape == (0,)
    assert out.dtype == np.dtype("<u8")


def test_encode_rejects_non_numeric_dtype() -> None:
    with pytest.raises(mpc.EncodingError, match="dtype"):
        FixedPoint().encode(np.array(["a", "b"]))


def test_encode_accepts_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.tensor([[1.5, -2.25]], dtype=torch.float32)
    assert signed(FixedPoint(16).encode(tensor)) == [98304, -147456]


def test_decode_inverts_encode_up_to_truncation() -> None:
    fp = FixedPoint(16)
    values = np.array([0.0, 1.0, -1.0, 1234.5, -0.000123, 3.0e9, -3.0e9])
    decoded = fp.decode(fp.encode(values))
    assert decoded.dtype == np.float64
    np.testing.assert_array_equal(decoded, np.trunc(values * 65536) / 65536)
    assert np.all(np.abs(decoded - values) < 2.0**-16)


@pytest.mark.parametrize(
    ("bad", "index", "shown"),
    [(math.nan, 2, "nan"), (math.inf, 2, "inf"), (-math.inf, 2, "-inf")],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_encode_refuses_non_finite_naming_first_index(
    bad: float, index: int, shown: str, dtype: type
) -> None:
    values = np.array([0.5, -0.25, bad, 1.0, bad], dtype=dtype)
    with pytest.raises(mpc.EncodingError) as info:
        FixedPoint().encode(values)
    message = str(info.value)
    assert f"index {index} " in message
    assert shown in message
    assert "finite" in message


@pytest.mark.parametrize("bound", [None, 1.0])
def test_encode_refuses_nan_with_or_without_bound(bound: float | None) -> None:
    with pytest.raises(mpc.EncodingError, match=r"index 0 is nan"):
        FixedPoint().encode(np.array([math.nan]), bound=bound)


def test_encode_refuses_beyond_bound_naming_first_index_and_value() -> None:
    values = np.array([0.5, -2.0, 3.0, -7.5, 9.0])
    with pytest.raises(mpc.EncodingError) as info:
        FixedPoint().encode(values, bound=2.5)
    message = str(info.value)
    assert "index 2 is 3.0" in message
    assert "2.5" in message


@pytest.mark.parametrize(
    ("values", "bound", "message"),
    [
        ([0.5, 3.0, math.nan], 1.0, "index 1 is 3.0, beyond"),
        ([0.5, math.inf, 3.0], 1.0, "index 1 is inf; expected a finite"),
        ([0.5, -1.0e300, math.nan], None, "index 1 is -1e+300; its encoding does not fit"),
        ([math.nan, 1.0e300], None, "index 0 is nan"),
    ],
)
def test_encode_names_the_first_offending_value_whatever_its_kind(
    values: list[float], bound: float | None, message: str
) -> None:
    with pytest.raises(mpc.EncodingError, match=re.escape(message)):
        FixedPoint().encode(np.array(values), bound=bound)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_encode_refuses_values_beyond_bound_even_with_the_same_encoding(dtype: type) -> None:
    # 1.00001 · 2^16 truncates to 65536 = floor(1.0 · 2^16), but it is beyond the bound.
    with pytest.raises(mpc.EncodingError, match=r"index 1 is 1\.0000\d*, beyond the round's bound"):
        FixedPoint(16).encode(np.array([1.0, 1.00001], dtype=dtype), bound=1.0)
    inside = np.nextafter(dtype(1.0), dtype(0.0))
    assert signed(FixedPoint(16).encode(np.array([inside]), bound=1.0)) == [65535]


def test_encode_refuses_negative_beyond_bound() -> None:
    with pytest.raises(mpc.EncodingError, match=r"index 1 is -1\.5"):
        FixedPoint().encode(np.array([1.0, -1.5]), bound=1.0)


def test_encode_refuses_one_ulp_of_encoding_beyond_bound() -> None:
    # 1 + 2^-16 encodes to 65537 > floor(1.0 · 2^16).
    with pytest.raises(mpc.EncodingError, match="index 0"):
        FixedPoint(16).encode(np.array([1.0 + 2.0**-16]), bound=1.0)


def test_encode_accepts_values_exactly_at_bound() -> None:
    assert signed(FixedPoint(16).encode(np.array([2.5, -2.5]), bound=2.5)) == [163840, -163840]


def test_encode_without_bound_refuses_what_does_not_fit_in_int64() -> None:
    fp = FixedPoint(16)
    largest = math.nextafter(2.0**47, 0.0)  # · 2^16 = 2^63 − 2^10, still fits
    assert signed(fp.encode(np.array([largest, -largest]))) == [2**63 - 1024, -(2**63 - 1024)]
    with pytest.raises(mpc.EncodingError, match=r"index 1 .*64 bits"):
        fp.encode(np.array([1.0, 2.0**47]))
    with pytest.raises(mpc.EncodingError, match="index 0"):
        fp.encode(np.array([1.0e300]))


def test_encode_with_large_bound_still_refuses_what_does_not_fit_in_int64() -> None:
    # A bound far beyond the ring must not let an out-of-range value wrap silently.
    with pytest.raises(mpc.EncodingError, match=r"index 1 is 1e\+20; its encoding does not fit"):
        FixedPoint(16).encode(np.array([0.5, 1.0e20]), bound=1.0e30)


@pytest.mark.parametrize("precision", [-1, 53, 64])
def test_precision_out_of_range_is_refused(precision: int) -> None:
    with pytest.raises(mpc.ParameterError, match=rf"precision_bits must be .*0\.\.52.*{precision}"):
        FixedPoint(precision)


def test_precision_must_be_int() -> None:
    with pytest.raises(mpc.ParameterError, match="precision_bits"):
        FixedPoint(16.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("bound", [0.0, -1.0, math.nan, math.inf])
def test_bad_bound_is_refused(bound: float) -> None:
    with pytest.raises(mpc.ParameterError, match="bound must be"):
        FixedPoint().encode(np.array([0.0]), bound=bound)


def test_bound_whose_encoding_overflows_float_is_refused() -> None:
    with pytest.raises(mpc.ParameterError, match=r"bound · 2\^16 must be finite"):
        FixedPoint(16).encode(np.array([0.0]), bound=1.0e305)
    with pytest.raises(mpc.ParameterError):
        max_clients_for_bound(1.0e305)


@pytest.mark.parametrize("clients", [0, -3])
def test_max_bound_refuses_fewer_than_one_client(clients: int) -> None:
    with pytest.raises(mpc.ParameterError, match=rf"max_clients must be .*{clients}"):
        max_bound(clients)


@pytest.mark.parametrize("precision", [0, 16, 52])
@pytest.mark.parametrize("clients", [1, 2, 3, 7, 100, 10**6, 2**31])
def test_max_bound_and_max_clients_round_trip(precision: int, clients: int) -> None:
    bound = max_bound(clients, precision)
    assert bound > 0
    assert max_clients_for_bound(bound, precision) == clients
    fp = FixedPoint(precision)
    assert fp.max_bound(clients) == bound
    assert fp.max_clients_for_bound(bound) == clients
    # Safe, and tight up to float64 rounding of the per-client share of 2^63 − 1.
    encoded = int(fp.encoded_bound(bound))
    per_client = INT63 // clients
    assert clients * encoded <= INT63
    assert 0 <= per_client - encoded <= per_client >> 52


@pytest.mark.parametrize("bound", [1.0e-3, 0.5, 1.0, 3.75, 1.0e4, 1.0e9])
def test_max_clients_for_bound_is_the_largest_safe_count(bound: float) -> None:
    clients = max_clients_for_bound(bound)
    encoded = math.floor(bound * 65536)
    assert clients * encoded <= INT63 < (clients + 1) * encoded


def test_max_clients_for_bound_below_one_unit_is_unlimited() -> None:
    # Everything within ±2^-17 encodes to 0, so no number of clients can wrap.
    assert max_clients_for_bound(2.0**-17) == INT63


@pytest.mark.parametrize("clients", [2, 3, 7, 1000])
def test_max_clients_at_the_bound_sum_without_wrapping(clients: int) -> None:
    fp = FixedPoint(16)
    bound = fp.max_bound(clients)
    assert fp.max_clients_for_bound(bound) == clients
    one = fp.encode(np.array([bound, -bound]), bound=bound)
    encoded = int(one.view(np.int64)[0])

    total = np.zeros(2, dtype=np.uint64)
    for _ in range(clients):
        np.add(total, one, out=total)
    assert signed(total) == [clients * encoded, -clients * encoded]
    np.testing.assert_array_equal(
        fp.decode(total), [clients * encoded / 65536, -clients * encoded / 65536]
    )

    # One client more pushes the positive sum past 2^63 − 1: the signed view wraps.
    np.add(total, one, out=total)
    wrapped = signed(total)[0]
    assert wrapped < 0
    assert wrapped == (clients + 1) * encoded - 2**64


@pytest.mark.parametrize("index", [0, (1 << 16) - 1, 1 << 16, 3 * (1 << 16) + 7])
def test_the_first_bad_value_is_named_by_its_flat_index_whatever_the_chunk(index: int) -> None:
    """Encoding runs in chunks: the index is the input's, not the chunk's."""
    x = np.zeros(4 * (1 << 16), dtype=np.float32)
    x[index] = 2.0
    x[-1] = np.nan  # a later problem is not the one reported
    with pytest.raises(mpc.EncodingError, match=rf"value at index {index} is 2.0, beyond"):
        FixedPoint(16).encode(x, bound=1.0)
