"""A party's background tasks: one daemon thread each, calling a function every so often.

The leader's tick, the revealer's tick, the retention janitor and the peer probe all run
this way. A failing call is logged with its traceback and the task goes on at the next
interval: one bad round must not stop deadlines, reveals or pruning for every other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("mpcagg.periodic")


class Periodic:
    """Calls ``task`` every ``interval`` seconds in a daemon thread named ``name``, the
    first time after ``first_wait`` seconds (default: ``interval``; 0 calls it at once).

    :meth:`start` once, :meth:`stop` any number of times (it waits up to ``join_s`` for
    a call in progress to return).
    """

    def __init__(
        self,
        name: str,
        interval: float,
        task: Callable[[], object],
        *,
        first_wait: float | None = None,
        join_s: float = 5.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.name = name
        self._interval = interval
        self._task = task
        self._first_wait = interval if first_wait is None else first_wait
        self._join_s = join_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; raises :class:`RuntimeError` if it was started before."""
        if self._thread is not None:
            raise RuntimeError(f"background task {self.name!r} was already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait up to ``join_s`` for the call in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._join_s)

    def _run(self) -> None:
        wait = self._first_wait
        while not self._stop.wait(wait):
            wait = self._interval
            try:
                self._task()
            except Exception:
                log.exception(
                    "background task %s failed (it runs again in %.1f s)", self.name, self._interval
                )
