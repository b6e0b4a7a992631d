"""How the benchmark writes a parameter count and a byte count, in one place."""

from __future__ import annotations


def si(x: float) -> str:
    """A power of ten as ``1eK`` (``1e6``), anything else as it is (``3``, ``2000``)."""
    n = int(x)
    if n == x and n > 0:
        exp = len(str(n)) - 1
        if n == 10**exp:
            return f"1e{exp}"
    return f"{x:g}"


def size(n: float, digits: int = 2) -> str:
    """Bytes in decimal units with ``digits`` decimals: ``8.02 MB``, ``88.42 kB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n:.0f} B"
