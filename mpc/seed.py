"""Seeds: exactly 32 bytes of key material for one party's pseudorandom share.

A :class:`Seed` never shows its bytes (``repr`` is ``Seed(..)``), compares in
constant time, and refuses to be pickled or copied into logs. Fresh seeds are drawn
with :meth:`Seed.generate` (``secrets``) at the client edge only; everything in
:mod:`mpc` takes seeds as arguments.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, NoReturn

from mpcagg.mpc.errors import SeedError

SEED_BYTES = 32


class Seed:
    """32 bytes of secret seed material."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes | bytearray | memoryview) -> None:
        if not isinstance(material, (bytes, bytearray, memoryview)):
            raise SeedError(f"seed must be bytes, got {type(material).__name__}")
        raw = bytes(material)
        if len(raw) != SEED_BYTES:
            raise SeedError(f"seed must be exactly {SEED_BYTES} bytes, got {len(raw)}")
        self._material = raw

    @classmethod
    def generate(cls) -> Seed:
        """A fresh seed from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(SEED_BYTES))

    def expose(self) -> bytes:
        """The raw bytes: for the PRG and the wire only, never for printing."""
        return self._material

    def __repr__(self) -> str:
        return "Seed(..)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "Seed(..)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Seed):
            return NotImplemented
        return hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        raise TypeError("Seed is not hashable (it would leak timing through dict lookups)")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Seed refuses to be pickled")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("Seed refuses to be pickled")
