"""A trainer's encoded update: held whole, or encoded piece by piece as it is needed.

An update of up to :data:`STREAM_BYTES` encoded is encoded once and held whole
(:meth:`Update.whole`), so a retry or a resume resends it without the caller's tensors.
A larger one, e.g. 10⁸ parameters (800 MB encoded), is never held: :meth:`Update.streamed`
keeps the caller's arrays (views, not copies) and encodes ``[start, stop)`` into a
chunk-sized buffer each time the upload needs it (the digest pass, then each send), so
the trainer holds the model and a few chunks. Resuming it needs the same tensors again;
their digest must equal the sharing's (:class:`UpdateConflict` otherwise). The tensors
must not change while :meth:`clients.SecureAggregator.submit` runs: each pass reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mpcagg.mpc import EncodingError, FixedPoint, prg
from mpcagg.mpc.digest import PayloadDigest, payload_digest
from mpcagg.mpc.ring import DTYPE, RingVector, to_bytes
from mpcagg.mpc.sharing import Fill, copying_fill
from mpcagg.protocol.errors import InputError

STREAM_BYTES = 256 << 20
"""Encoded updates longer than this are streamed, never held whole."""

DIGEST_CHUNK = 1 << 18
"""Elements encoded per step of a streamed update's digest pass (2 MiB)."""


@dataclass(frozen=True, eq=False)
class Update:
    """An encoded update of ``length`` ring elements and its payload digest
    (:mod:`mpc.digest` of its little-endian bytes); ``vector`` is the update itself when
    held whole, else None and :meth:`fill` encodes the elements asked for. Never prints
    its contents."""

    length: int
    digest: bytes = field(repr=False)
    fill: Fill = field(repr=False)
    vector: RingVector | None = field(default=None, repr=False)

    @classmethod
    def whole(cls, vector: RingVector) -> Update:
        """An update held whole."""
        x = np.ascontiguousarray(vector, dtype=DTYPE)
        return cls(len(x), payload_digest(to_bytes(x)), copying_fill(x), x)

    @classmethod
    def streamed(
        cls,
        parts: Sequence[tuple[str, np.ndarray]],
        fixed_point: FixedPoint,
        bound: float,
        chunk_elements: int = DIGEST_CHUNK,
    ) -> Update:
        """The update of the named float arrays ``parts`` (flattened, in order),
        encoded on demand; one pass now checks every value and computes the digest.

        Raises :class:`InputError` naming the tensor and index of the first value that
        cannot be encoded (non-finite, beyond ``±bound``).
        """
        flats = [(name, a.reshape(-1)) for name, a in parts]
        offsets = np.cumsum([0] + [len(a) for _, a in flats]).tolist()
        length = int(offsets[-1])

        def fill(start: int, stop: int, out: RingVector) -> None:
            for (name, a), lo, hi in zip(flats, offsets, offsets[1:], strict=False):
                a_start, a_stop = max(start, lo), min(stop, hi)
                if a_start >= a_stop:
                    continue
                target = out[a_start - start : a_stop - start]
                try:
                    fixed_point.encode(
                        a[a_start - lo : a_stop - lo], bound, out=target, first_index=a_start - lo
                    )
                except EncodingError as exc:
                    raise InputError(f"tensor {name!r}: {exc}") from None

        digest = PayloadDigest()
        buffer = np.empty(min(length, chunk_elements), dtype=DTYPE)
        for start, stop in prg.chunks(length, chunk_elements):
            piece = buffer[: stop - start]
            fill(start, stop, piece)
            digest.update(to_bytes(piece))
        return cls(length, digest.digest(), fill)
