"""A byte-progress bar over several concurrent uploads (tqdm, off when not a terminal)."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any

from tqdm import tqdm


def wants_progress(progress: bool | None) -> bool:
    """``progress`` if set, else whether stderr is a terminal."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class UploadProgress:
    """Total payload bytes across parties; a retried upload does not count twice."""

    def __init__(self, total: int, *, enabled: bool, desc: str) -> None:
        self._lock = threading.Lock()
        self._done: dict[int, int] = {}
        self._bar: Any = (
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                file=sys.stderr,
                leave=False,
            )
            if enabled
            else None
        )

    def advance(self, party: int, sent: int) -> None:
        """Party ``party`` has yielded ``sent`` payload bytes in its current attempt."""
        with self._lock:
            delta = sent - self._done.get(party, 0)
            if delta <= 0:
                return
            self._done[party] = sent
            if self._bar is not None:
                self._bar.update(delta)

    def __enter__(self) -> UploadProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
