"""Fixed-point encoding into Z_2^64, bit-compatible with CrypTen.

``encode(x) = trunc(x · 2^f)`` computed in the input's own float dtype, exactly as
``crypten.encoder.FixedPointEncoder(f).encode`` does for float tensors
(``(scale * x).long()``: scaling by a power of two is exact, the cast truncates
toward zero). The result is returned as ring elements (``uint64``); its ``int64``
view is the CrypTen share value.

A round fixes a per-coordinate bound ``B``: every input satisfies ``|x| <= B``, so
``|encode(x)| <= floor(B · 2^f)`` and the signed sum of ``max_clients`` inputs stays
strictly inside (-2^63, 2^63): the ring never wraps and :func:`FixedPoint.decode`
of the sum is exact. :func:`max_bound` and :func:`max_clients_for_bound` convert
between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mpcagg.mpc.errors import EncodingError, ParameterError
from mpcagg.mpc.ring import DTYPE, RingVector, as_int64

DEFAULT_PRECISION_BITS = 16
_ENCODE_CHUNK = 1 << 16
"""Elements encoded per step (256 KiB of float32 temporaries)."""
_INT63 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Fixed-point parameters: ``precision_bits`` fractional bits (CrypTen default 16)."""

    precision_bits: int = DEFAULT_PRECISION_BITS

    def __post_init__(self) -> None:
        if not isinstance(self.precision_bits, int) or not 0 <= self.precision_bits <= 52:
            raise ParameterError(
                f"precision_bits must be an int in 0..52, got {self.precision_bits!r}"
            )

    @property
    def scale(self) -> int:
        """``2^precision_bits``."""
        return 1 << self.precision_bits

    def encode(
        self,
        x: Any,
        bound: float | None = None,
        out: RingVector | None = None,
        first_index: int = 0,
    ) -> RingVector:
        """Encode a float tensor or array into a flat vector of ring elements.

        ``x`` is a numpy array or a torch tensor of float32 or float64 (other float
        and integer dtypes are widened to float64 first). With ``out`` (a contiguous
        ring vector of ``x``'s size) the elements are written there and ``out`` is
        returned. Raises :class:`EncodingError` naming the first offending flat index
        (counted from ``first_index``, e.g. where ``x`` starts in a larger tensor) and
        value if a value is NaN, ±inf, or beyond ``±bound`` (when a bound is given), or if
        ``x · 2^f`` does not fit in int64; :class:`ParameterError` for an ``out`` of
        another size or type.
        """
        arr = _as_float_array(x).reshape(-1)
        # |x| <= bound, checked as |x·2^f| <= bound·2^f (scaling by 2^f is exact), which
        # also gives trunc(|x·2^f|) <= floor(bound·2^f); and trunc(|x·2^f|) <= 2^63 − 1.
        if bound is not None:
            self.encoded_bound(bound)  # validates the bound
        scaled_bound = math.inf if bound is None else bound * self.scale
        if out is None:
            out = np.empty(arr.size, dtype=DTYPE)
        elif out.dtype != DTYPE or out.shape != (arr.size,) or not out.flags.c_contiguous:
            raise ParameterError(
                f"out must be a contiguous ring vector of {arr.size} elements, got "
                f"{out.dtype} of shape {list(out.shape)}"
            )
        signed = out.view(np.int64)
        scale = arr.dtype.type(self.scale)
        # In chunks, so the float temporaries stay cache-sized whatever the length.
        for start in range(0, arr.size, _ENCODE_CHUNK):
            part = arr[start : start + _ENCODE_CHUNK]
            scaled = np.multiply(part, scale, dtype=arr.dtype)
            # One pass over the data in the common case; NaN makes the max NaN.
            peak = float(np.max(np.abs(scaled)))
            if not (math.isfinite(peak) and peak <= scaled_bound and math.floor(peak) <= _INT63):
                _raise_first_bad(part, scaled, bound, offset=first_index + start)
            signed[start : start + len(part)] = scaled  # C cast: truncation toward zero
        return out

    def decode(self, ring: RingVector) -> npt.NDArray[np.float64]:
        """Decode ring elements (e.g. a revealed sum) to float64 via the signed view."""
        signed = as_int64(np.ascontiguousarray(ring, dtype=DTYPE))
        return signed.astype(np.float64) / float(self.scale)

    def encoded_bound(self, bound: float) -> float:
        """``floor(bound · 2^f)``: the largest magnitude an encoded input may have."""
        if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ParameterError(f"bound must be a finite number > 0, got {bound!r}")
        if not math.isfinite(bound * self.scale):
            raise ParameterError(f"bound · 2^{self.precision_bits} must be finite, got {bound!r}")
        return float(math.floor(bound * self.scale))

    def max_bound(self, max_clients: int) -> float:
        """Largest per-coordinate bound B such that ``max_clients`` inputs never wrap."""
        return max_bound(max_clients, self.precision_bits)

    def max_clients_for_bound(self, bound: float) -> int:
        """Largest number of clients whose inputs, each within ``±bound``, never wrap."""
        return max_clients_for_bound(bound, self.precision_bits)


def max_bound(max_clients: int, precision_bits: int = DEFAULT_PRECISION_BITS) -> float:
    """Largest bound B with ``max_clients · floor(B · 2^f) <= 2^63 - 1``.

    The result is a float that is exactly representable and safe (rounded down).
    """
    if not isinstance(max_clients, int) or max_clients < 1:
        raise ParameterError(f"max_clients must be an int >= 1, got {max_clients!r}")
    FixedPoint(precision_bits)  # validates precision
    per_client = _INT63 // max_clients
    bound = math.ldexp(float(per_client), -precision_bits)
    # float(per_client) may round up; step down until the encoded bound is safe.
    while math.floor(bound * (1 << precision_bits)) > per_client:
        bound = math.nextafter(bound, 0.0)
    return bound


def max_clients_for_bound(bound: float, precision_bits: int = DEFAULT_PRECISION_BITS) -> int:
    """Largest ``max_clients`` such that inputs within ``±bound`` never wrap the sum."""
    encoded = int(FixedPoint(precision_bits).encoded_bound(bound))
    if encoded == 0:
        return _INT63
    return _INT63 // encoded


def _as_float_array(x: Any) -> npt.NDArray[np.floating[Any]]:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor; torch stays optional
        x = x.detach().cpu()
        if str(x.dtype) not in ("torch.float32", "torch.float64"):
            x = x.double()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype.kind not in "fiub":
            raise EncodingError(f"expected a float or integer array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def _raise_first_bad(
    arr: npt.NDArray[Any], scaled: npt.NDArray[Any], bound: float | None, offset: int = 0
) -> None:
    """Raise for the first value that is non-finite, beyond ``±bound`` or too large
    (``arr`` starts at flat index ``offset`` of the input)."""
    finite = np.isfinite(arr)
    # trunc(|v|) > 2^63 − 1 for a float v is exactly |v| >= 2^63.
    too_big = np.abs(scaled.astype(np.float64)) >= 2.0**63
    beyond = np.zeros_like(finite) if bound is None else np.abs(arr.astype(np.float64)) > bound
    j = int(np.argmax(~finite | too_big | beyond))
    value, i = float(arr[j]), offset + j
    if not finite[j]:
        raise EncodingError(f"value at index {i} is {value!r}; expected a finite number")
    if beyond[j]:
        raise EncodingError(f"value at index {i} is {value!r}, beyond the round's bound ±{bound!r}")
    raise EncodingError(f"value at index {i} is {value!r}; its encoding does not fit in 64 bits")
