"""CPU seconds and peak RSS of processes, and the size of data directories, per round.

Peak RSS per round: before a round, ``5`` is written to ``/proc/<pid>/clear_refs``,
which resets the kernel's high-water mark ``VmHWM`` to the current RSS (Linux ≥ 4.0,
same user); after the round ``VmHWM`` is the round's peak. Where the reset is not
allowed (or not Linux), the lifetime peak is reported and ``peak_is_lifetime`` says so.

Data directories (:class:`DiskMeter`): a thread adds up the allocated size of every file
under each directory every ``interval_s`` and keeps the largest total it saw.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True, slots=True)
class ProcessRound:
    """One process over one round."""

    name: str
    cpu_s: float
    peak_rss_bytes: int
    peak_is_lifetime: bool
    start_rss_bytes: int = 0
    """RSS when the round started (what the process held before it)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cpu_s": round(self.cpu_s, 4),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_is_lifetime": self.peak_is_lifetime,
            "start_rss_bytes": self.start_rss_bytes,
        }


class ProcessMeter:
    """Measures a fixed set of processes (by pid) between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._cpu0: dict[str, float] = {}
        self._rss0: dict[str, int] = {}
        self._reset: dict[str, bool] = {}

    def start(self) -> None:
        for name, proc in self._procs.items():
            self._reset[name] = _reset_peak(proc.pid)
            self._cpu0[name] = _cpu(proc)
            self._rss0[name] = int(proc.memory_info().rss)

    def stop(self) -> list[ProcessRound]:
        """Each process since :meth:`start` (may be called more than once: a peek)."""
        out = []
        for name, proc in self._procs.items():
            out.append(
                ProcessRound(
                    name=name,
                    cpu_s=_cpu(proc) - self._cpu0[name],
                    peak_rss_bytes=_peak_rss(proc),
                    peak_is_lifetime=not self._reset[name],
                    start_rss_bytes=self._rss0[name],
                )
            )
        return out


class DiskMeter:
    """The largest total size each directory reached while running (use as ``with``)."""

    def __init__(self, dirs: dict[str, Path], interval_s: float = 0.01) -> None:
        self._dirs = dirs
        self._interval = interval_s
        self.peak: dict[str, int] = dict.fromkeys(dirs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-meter", daemon=True)

    def __enter__(self) -> DiskMeter:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        for name, path in self._dirs.items():
            self.peak[name] = max(self.peak[name], dir_bytes(path))


def dir_bytes(path: Path) -> int:
    """Bytes allocated to the files under ``path`` (files vanishing meanwhile are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss(proc: psutil.Process) -> int:
    """``VmHWM`` in bytes (peak RSS since the last reset), else the current RSS."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(proc.memory_info().rss)
