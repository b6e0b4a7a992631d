"""The ring Z_2^64, held as little-endian ``numpy.uint64`` with wrap-around.

The same bits viewed as ``int64`` are what CrypTen's ``ArithmeticSharedTensor``
holds; :func:`as_int64` and :func:`from_int64` switch views without copying.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from mpcagg.mpc.errors import LengthError

DTYPE = np.dtype("<u8")
"""Ring element dtype: unsigned 64-bit, little-endian (the wire format)."""

ELEMENT_BYTES = 8
MODULUS = 1 << 64

RingVector = npt.NDArray[np.uint64]


def zeros(length: int) -> RingVector:
    """A fresh zero vector of ``length`` ring elements."""
    if length < 0:
        raise LengthError(f"vector length must be >= 0, got {length}")
    return np.zeros(length, dtype=DTYPE)


def add_(acc: RingVector, other: RingVector) -> RingVector:
    """``acc += other`` in place, modulo 2^64. Returns ``acc``."""
    check_length(other, len(acc))
    np.add(acc, other, out=acc)
    return acc


def sub_(acc: RingVector, other: RingVector) -> RingVector:
    """``acc -= other`` in place, modulo 2^64. Returns ``acc``."""
    check_length(other, len(acc))
    np.subtract(acc, other, out=acc)
    return acc


def neg(x: RingVector) -> RingVector:
    """``-x`` modulo 2^64, as a new vector."""
    out = np.zeros_like(x)
    np.subtract(out, x, out=out)
    return out


def check_length(vector: RingVector, expected: int) -> None:
    """Raise :class:`LengthError` unless ``len(vector) == expected``."""
    if len(vector) != expected:
        raise LengthError(f"vector length {len(vector)} does not match expected length {expected}")


def as_int64(x: RingVector) -> npt.NDArray[np.int64]:
    """The signed (two's complement) view of ring elements, without a copy."""
    return x.view(np.int64)


def from_int64(x: npt.NDArray[Any]) -> RingVector:
    """The ring view of signed int64 values, without a copy when already int64."""
    arr = np.ascontiguousarray(x, dtype=np.int64)
    return arr.view(DTYPE)


def from_bytes(buf: bytes | bytearray | memoryview) -> RingVector:
    """Ring elements read from little-endian bytes without a copy (read-only if ``buf`` is)."""
    n = memoryview(buf).nbytes
    if n % ELEMENT_BYTES:
        raise LengthError(
            f"byte length {n} is not a multiple of {ELEMENT_BYTES} (one uint64 per element)"
        )
    return np.frombuffer(buf, dtype=DTYPE)


def to_bytes(x: RingVector) -> memoryview:
    """Little-endian bytes of ``x`` without a copy (``x`` must be contiguous)."""
    arr = np.ascontiguousarray(x, dtype=DTYPE)
    return arr.data.cast("B")


def total(vectors: Iterable[RingVector], length: int) -> RingVector:
    """Σ ``vectors`` in Z_2^64, each of ``length`` elements (the sum of aggregate shares)."""
    out = zeros(length)
    for v in vectors:
        check_length(v, length)
        add_(out, v)
    return out
