"""Share-arithmetic engines: ``numpy`` (default, fast path) and ``crypten``."""

from __future__ import annotations

from mpc.engines.base import Engine
from mpc.engines.numpy_engine import NumpyEngine
from mpc.errors import ParameterError
from mpc.fixed_point import DEFAULT_PRECISION_BITS

ENGINE_NAMES = ("numpy", "crypten")


def get_engine(name: str = "numpy", precision_bits: int = DEFAULT_PRECISION_BITS) -> Engine:
    """The engine called ``name``. ``crypten`` raises :class:`mpc.errors.EngineUnavailable`
    if CrypTen cannot be imported."""
    if name == "numpy":
        return NumpyEngine()
    if name == "crypten":
        from mpc.engines.crypten_engine import CryptenEngine

        return CryptenEngine(precision_bits)
    raise ParameterError(f"engine must be one of {', '.join(ENGINE_NAMES)}; got {name!r}")


__all__ = ["ENGINE_NAMES", "Engine", "NumpyEngine", "get_engine"]
