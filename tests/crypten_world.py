"""CrypTen's single-party world for tests that build the crypten engine in-process.

``crypten.init()`` (run by the engine's constructor) writes its rendezvous settings into
``os.environ`` (``WORLD_SIZE=1`` and so on) when they are missing; a subprocess started
later would inherit them. :func:`crypten_world_of_one` points them at a file on
loopback, and restores the environment afterwards (uninitialising CrypTen if it
initialised it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mpcagg.mpc import crypten_shim

DIST_ENV = ("DISTRIBUTED_BACKEND", "RENDEZVOUS", "WORLD_SIZE", "RANK", "GLOO_SOCKET_IFNAME")


@contextlib.contextmanager
def crypten_world_of_one(directory: Path) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in DIST_ENV}
    crypten = crypten_shim.load()
    was_initialized = crypten.is_initialized()
    if not was_initialized:
        os.environ.update(
            DISTRIBUTED_BACKEND="gloo",
            RENDEZVOUS=f"file://{directory / 'rdv'}",
            WORLD_SIZE="1",
            RANK="0",
            GLOO_SOCKET_IFNAME="lo",
        )
        crypten_shim.ensure_initialized()
    try:
        yield
    finally:
        if not was_initialized and crypten.is_initialized():
            crypten.uninit()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
