"""The ring Z_2^64 (mpc.ring): wrap-around, views without copies, byte conversion."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc import ring

TOP = 2**64 - 1


def vec(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_dtype_is_little_endian_uint64() -> None:
    assert np.dtype("<u8") == ring.DTYPE
    assert ring.MODULUS == 2**64
    assert ring.ELEMENT_BYTES == 8


def test_zeros() -> None:
    z = ring.zeros(5)
    assert z.dtype == ring.DTYPE
    assert z.tolist() == [0] * 5
    assert ring.zeros(0).shape == (0,)


def test_zeros_refuses_negative_length() -> None:
    with pytest.raises(mpc.LengthError, match="-1"):
        ring.zeros(-1)


def test_add_wraps_around_and_is_in_place() -> None:
    acc = vec(TOP, 2**64 - 5, 2**63, 7)
    out = ring.add_(acc, vec(1, 10, 2**63, 3))
    assert out is acc
    assert acc.tolist() == [0, 5, 0, 10]


def test_sub_wraps_around_and_is_in_place() -> None:
    acc = vec(0, 5, 2**63)
    out = ring.sub_(acc, vec(1, 10, 2**63 + 1))
    assert out is acc
    assert acc.tolist() == [TOP, 2**64 - 5, TOP]


def test_neg_is_additive_inverse_and_fresh() -> None:
    x = vec(0, 1, 2**63, TOP, 12345)
    n = ring.neg(x)
    assert n.tolist() == [0, TOP, 2**63, 1, 2**64 - 12345]
    assert not np.shares_memory(n, x)
    assert ring.add_(n, x).tolist() == [0] * 5


@pytest.mark.parametrize("op", [ring.add_, ring.sub_])
def test_length_mismatch_is_refused_with_both_lengths(
    op: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> None:
    acc = vec(1, 2, 3)
    with pytest.raises(mpc.LengthError, match=r"length 2 does not match expected length 3"):
        op(acc, vec(1, 2))
    assert acc.tolist() == [1, 2, 3]


def test_check_length() -> None:
    ring.check_length(vec(1, 2), 2)
    with pytest.raises(mpc.LengthError, match=r"length 2 .* 4"):
        ring.check_length(vec(1, 2), 4)


def test_int64_views_share_memory_and_map_twos_complement() -> None:
    x = vec(TOP, 2**63, 2**63 - 1, 0)
    s = ring.as_int64(x)
    assert np.shares_memory(s, x)
    assert s.tolist() == [-1, -(2**63), 2**63 - 1, 0]
    back = ring.from_int64(s)
    assert back.dtype == ring.DTYPE
    assert np.shares_memory(back, x)
    assert back.tolist() == x.tolist()


def test_from_int64_converts_other_integer_types() -> None:
    assert ring.from_int64(np.array([-2, 3], dtype=np.int32)).tolist() == [2**64 - 2, 3]


def test_from_bytes_is_little_endian() -> None:
    raw = bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80])
    assert ring.from_bytes(raw).tolist() == [1, 2**63]


def test_from_bytes_of_bytearray_is_zero_copy_and_writable() -> None:
    buf = bytearray(8 * 4)
    x = ring.from_bytes(buf)
    assert np.shares_memory(x, np.frombuffer(buf, dtype=np.uint8))
    assert x.flags.writeable
    buf[8] = 7
    assert x.tolist() == [0, 7, 0, 0]


def test_from_bytes_of_bytes_is_zero_copy_and_read_only() -> None:
    raw = bytes(range(16))
    x = ring.from_bytes(raw)
    assert np.shares_memory(x, np.frombuffer(raw, dtype=np.uint8))
    assert not x.flags.writeable


def test_from_bytes_of_memoryview_is_zero_copy() -> None:
    buf = bytearray(range(24))
    x = ring.from_bytes(memoryview(buf)[8:])
    assert np.shares_memory(x, np.frombuffer(buf, dtype=np.uint8))
    assert len(x) == 2


def test_from_bytes_of_empty_buffer_is_empty() -> None:
    assert ring.from_bytes(b"").shape == (0,)


@pytest.mark.parametrize("nbytes", [1, 7, 9, 15, 801])
def test_from_bytes_refuses_partial_elements(nbytes: int) -> None:
    with pytest.raises(mpc.LengthError, match=rf"byte length {nbytes} is not a multiple of 8"):
        ring.from_bytes(bytes(nbytes))


def test_to_bytes_is_little_endian_and_zero_copy() -> None:
    x = vec(1, 2**63 + 2)
    mv = ring.to_bytes(x)
    assert bytes(mv) == b"\x01" + bytes(7) + b"\x02" + bytes(6) + b"\x80"
    assert np.shares_memory(np.frombuffer(mv, dtype=np.uint8), x)


def test_bytes_round_trip() -> None:
    x = vec(0, 1, TOP, 2**63, 0x0123456789ABCDEF)
    assert ring.from_bytes(bytes(ring.to_bytes(x))).tolist() == x.tolist()
    assert bytes(ring.to_bytes(ring.zeros(0))) == b""
