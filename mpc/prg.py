"""The pseudorandom generator that expands a seed into one party's share.

Construction (wire format version 1)::

    info  = "mpcagg/prg" ‖ u16 version ‖ lp(usage) ‖ lp(round_id) ‖ lp(client_id) ‖ u16 party
    key ‖ nonce = HKDF-SHA256(ikm = seed, salt = none, info, L = 32)
    stream = AES-128-CTR(key, initial counter block = nonce) applied to zero bytes
    elements = stream read as little-endian uint64

``lp(s)`` is the UTF-8 bytes of ``s`` prefixed by their length as a big-endian u32,
so distinct contexts never give the same ``info`` (domain separation, as VDAF's XOFs
take a domain separation tag and a binder string, draft-irtf-cfrg-vdaf-12 §6.2.3; HKDF
is RFC 5869 §2). AES-CTR (NIST SP 800-38A §6.5) is a PRG under the standard PRP
assumption.

Expansion writes into a caller's buffer in chunks small enough to stay in cache,
so that :func:`add_stream_into` can fuse the expansion with the ring addition.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpcagg.mpc.errors import ParameterError
from mpcagg.mpc.ring import DTYPE, ELEMENT_BYTES, RingVector
from mpcagg.mpc.seed import Seed

PROTOCOL_VERSION = 1
USAGE_SHARE = "share"
CHUNK_ELEMENTS = 1 << 15
"""Elements per expansion chunk: 256 KiB, so keystream and target stay in L2."""

_LABEL = b"mpcagg/prg"


@dataclass(frozen=True, slots=True)
class PrgContext:
    """What one PRG expansion is bound to: protocol version, usage, round, client, party."""

    round_id: str
    client_id: str
    party: int
    usage: str = USAGE_SHARE
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.party < 1 << 16:
            raise ParameterError(f"party index must be in 0..65535, got {self.party}")
        if not 0 <= self.version < 1 << 16:
            raise ParameterError(f"version must be in 0..65535, got {self.version}")

    def info(self) -> bytes:
        """The HKDF ``info`` string for this context (see module docstring)."""
        parts = [_LABEL, struct.pack(">H", self.version)]
        for field in (self.usage, self.round_id, self.client_id):
            raw = field.encode("utf-8")
            parts.append(struct.pack(">I", len(raw)))
            parts.append(raw)
        parts.append(struct.pack(">H", self.party))
        return b"".join(parts)


def keystream(seed: Seed, context: PrgContext) -> CipherContext:
    """AES-128-CTR encryptor keyed for ``(seed, context)``; encrypting zeros gives the stream."""
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context.info()).derive(
        seed.expose()
    )
    return Cipher(algorithms.AES(okm[:16]), modes.CTR(okm[16:])).encryptor()


def chunks(length: int, chunk: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` element ranges covering ``0..length`` in steps of ``chunk``."""
    for start in range(0, length, chunk):
        yield start, min(start + chunk, length)


def expand_into(seed: Seed, context: PrgContext, out: RingVector) -> RingVector:
    """Fill ``out`` (contiguous uint64) with the PRG output for ``(seed, context)``."""
    stream = keystream(seed, context)
    n = len(out)
    zeros = bytes(min(n, CHUNK_ELEMENTS) * ELEMENT_BYTES)
    raw = out.data.cast("B")
    for start, stop in chunks(n):
        nbytes = (stop - start) * ELEMENT_BYTES
        stream.update_into(memoryview(zeros)[:nbytes], raw[start * ELEMENT_BYTES :][:nbytes])
    return out


def expand(seed: Seed, context: PrgContext, length: int) -> RingVector:
    """A new vector of ``length`` PRG output elements for ``(seed, context)``."""
    if length < 0:
        raise ParameterError(f"length must be >= 0, got {length}")
    return expand_into(seed, context, np.empty(length, dtype=DTYPE))


def add_stream_into(
    acc: RingVector, seed: Seed, context: PrgContext, *, negate: bool = False
) -> None:
    """``acc += PRG(seed, context)`` (or ``-=`` with ``negate``) in place, chunk by chunk.

    Each chunk of keystream is written to a cache-sized scratch buffer and added
    straight away, so the full share is never materialised.
    """
    Keystream(seed, context).add_into(acc, negate=negate)


def add_streams_into(
    acc: RingVector, streams: Sequence[tuple[Seed, PrgContext]], *, negate: bool = False
) -> None:
    """``acc += Σ PRG(seed, context)`` over ``streams``, fused: the outer loop runs over
    cache-sized chunks of ``acc`` and the inner one over the streams, so each chunk of
    the accumulator is read and written once from cache whatever the number of streams
    (one keystream context per stream is kept meanwhile)."""
    keys = [Keystream(seed, context) for seed, context in streams]
    if not keys:
        return
    scratch = Keystream.scratch_for(len(acc))  # one for all, so it stays in cache
    for start, stop in chunks(len(acc)):
        target = acc[start:stop]
        for key in keys:
            key.add_into(target, negate=negate, scratch=scratch)


class Keystream:
    """The PRG output of one ``(seed, context)``, consumed in order: each call to
    :meth:`add_into` uses the next ``len(target)`` elements of the stream."""

    __slots__ = ("_cipher", "_scratch")

    def __init__(self, seed: Seed, context: PrgContext) -> None:
        self._cipher = keystream(seed, context)
        self._scratch: tuple[RingVector, bytes] | None = None

    @staticmethod
    def scratch_for(length: int) -> tuple[RingVector, bytes]:
        """A cache-sized work buffer (and as many zero bytes) for targets of ``length``."""
        n = max(1, min(length, CHUNK_ELEMENTS))
        return np.empty(n, dtype=DTYPE), bytes(n * ELEMENT_BYTES)

    def add_into(
        self,
        target: RingVector,
        *,
        negate: bool = False,
        scratch: tuple[RingVector, bytes] | None = None,
    ) -> None:
        """``target += next elements`` (``-=`` with ``negate``), modulo 2^64, in place.

        ``scratch`` (from :meth:`scratch_for`) may be shared by keystreams used in turn.
        """
        n = len(target)
        if n == 0:
            return
        if scratch is None:
            if self._scratch is None or len(self._scratch[0]) < min(n, CHUNK_ELEMENTS):
                self._scratch = self.scratch_for(n)
            scratch = self._scratch
        buf, zero_bytes = scratch
        raw = buf.data.cast("B")
        zeros = memoryview(zero_bytes)
        op = np.subtract if negate else np.add
        step = len(buf)
        for start in range(0, n, step):
            k = min(step, n - start)
            self._cipher.update_into(zeros[: k * ELEMENT_BYTES], raw[: k * ELEMENT_BYTES])
            part = target[start : start + k]
            op(part, buf[:k], out=part)
