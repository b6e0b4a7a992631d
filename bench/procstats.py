"""CPU seconds and peak RSS of server processes, per round (psutil and /proc).

Peak RSS per round: before a round, ``5`` is written to ``/proc/<pid>/clear_refs``,
which resets the kernel's high-water mark ``VmHWM`` to the current RSS (Linux ≥ 4.0,
same user); after the round ``VmHWM`` is the round's peak. Where the reset is not
allowed (or not Linux), the lifetime peak is reported and ``peak_is_lifetime`` says so.
"""

from __future__ import annotations

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

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cpu_s": round(self.cpu_s, 4),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_is_lifetime": self.peak_is_lifetime,
        }


class ProcessMeter:
    """Measures a fixed set of processes (by pid) between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._cpu0: dict[str, float] = {}
        self._reset: dict[str, bool] = {}

    def start(self) -> None:
        for name, proc in self._procs.items():
            self._reset[name] = _reset_peak(proc.pid)
            self._cpu0[name] = _cpu(proc)

    def stop(self) -> list[ProcessRound]:
        out = []
        for name, proc in self._procs.items():
            out.append(
                ProcessRound(
                    name=name,
                    cpu_s=_cpu(proc) - self._cpu0[name],
                    peak_rss_bytes=_peak_rss(proc),
                    peak_is_lifetime=not self._reset[name],
                )
            )
        return out


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
