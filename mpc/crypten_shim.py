"""The one place that imports CrypTen.

CrypTen 0.4.1 imports ``torch.onnx._internal.registration``, which torch ≥ 2.6 moved
to ``torch.onnx._internal.torchscript_exporter.registration``. :func:`load` installs
that alias (only if the old name is missing) and imports crypten. Nothing else in
the project imports ``crypten`` before this module has loaded it, so the numpy engine
works without it.

CrypTen keeps one process-wide communicator (``crypten.communicator.get()``).
:func:`use_communicator` makes ``get()`` answer another one for the current thread
(context) only: a party's reveal runs CrypTen over its group's channel
(:mod:`mpc.engines.crypten_communicator`) while the process's own single-party
``crypten.init()`` stays what every other caller sees. This hook, like the alias, is
global state by necessity: it is CrypTen's.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from mpcagg.mpc.errors import EngineUnavailable

_OLD = "torch.onnx._internal.registration"
_NEW = "torch.onnx._internal.torchscript_exporter.registration"
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("crypten_communicator", default=None)
_INSTALL = threading.Lock()


def _alias_registration() -> None:
    try:
        importlib.import_module(_OLD)
        return
    except ImportError:
        pass
    moved = importlib.import_module(_NEW)
    sys.modules[_OLD] = moved
    parent = importlib.import_module("torch.onnx._internal")
    parent.registration = moved  # type: ignore[attr-defined]


def load() -> ModuleType:
    """Import and return ``crypten`` (not initialised). Raises :class:`EngineUnavailable`."""
    if "crypten" in sys.modules:
        return sys.modules["crypten"]
    try:
        _alias_registration()
        return importlib.import_module("crypten")
    except ImportError as exc:
        raise EngineUnavailable(
            "the crypten engine needs crypten==0.4.1 and torch; "
            f"importing it failed: {exc}. Install with `pip install --no-deps crypten==0.4.1`."
        ) from exc


def ensure_initialized() -> ModuleType:
    """Import crypten and ``crypten.init()`` it once (single party unless the environment
    sets ``WORLD_SIZE``/``RANK``/``RENDEZVOUS`` for a multi-process run)."""
    crypten = load()
    if not crypten.is_initialized():
        crypten.init()
    return crypten


@contextlib.contextmanager
def use_communicator(communicator: Any) -> Iterator[None]:
    """Within the block, CrypTen's ``crypten.communicator.get()`` returns
    ``communicator`` in this thread (context); other threads see theirs, or CrypTen's
    own. Raises :class:`EngineUnavailable` if CrypTen cannot be imported."""
    crypten = load()
    _install(crypten.communicator)
    token = _ACTIVE.set(communicator)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _install(comm: ModuleType) -> None:
    """Replace ``comm.get`` once by a function that answers the context's communicator
    first (CrypTen's modules call ``comm.get()`` through the module, so all see it)."""
    with _INSTALL:
        if getattr(comm.get, "_mpcagg_context", False):
            return
        original = comm.get

        def get() -> Any:
            active = _ACTIVE.get()
            return active if active is not None else original()

        get._mpcagg_context = True  # type: ignore[attr-defined]
        comm.get = get  # type: ignore[attr-defined]
