"""Shared fixtures for the micro benchmarks: throughput bookkeeping and a summary table.

Run with ``pytest bench/test_micro.py --benchmark-only``. Each benchmark records its
throughput (elements/s and GB/s of uint64 ring data, from the median round) in
``benchmark.extra_info``; a table of all of them is printed at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mpcagg.mpc.ring import ELEMENT_BYTES

_DIST_ENV = ("DISTRIBUTED_BACKEND", "RENDEZVOUS", "WORLD_SIZE", "RANK", "GLOO_SOCKET_IFNAME")


@dataclass(frozen=True)
class Throughput:
    group: str
    name: str
    elements: int
    median_s: float
    min_s: float

    @property
    def elements_per_s(self) -> float:
        return self.elements / self.median_s

    @property
    def gb_per_s(self) -> float:
        return self.elements * ELEMENT_BYTES / self.median_s / 1e9


_RESULTS: list[Throughput] = []


@pytest.fixture
def measure(benchmark: Any) -> Callable[..., Any]:
    """``measure(fn, *args, elements=d)``: benchmark ``fn(*args)`` and record its throughput."""

    def run(fn: Callable[..., Any], *args: Any, elements: int) -> Any:
        result = benchmark(fn, *args)
        if benchmark.stats is not None:  # None under --benchmark-disable
            stats = benchmark.stats.stats
            row = Throughput(
                group=benchmark.group or "",
                name=benchmark.name,
                elements=elements,
                median_s=stats.median,
                min_s=stats.min,
            )
            benchmark.extra_info.update(
                elements=elements,
                elements_per_s=round(row.elements_per_s),
                gb_per_s_uint64=round(row.gb_per_s, 3),
            )
            _RESULTS.append(row)
        return result

    return run


@pytest.fixture(scope="session")
def crypten_single_party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A single-party CrypTen (gloo on loopback, rendezvous in a temporary directory)."""
    from mpcagg.mpc import crypten_shim

    saved = {key: os.environ.get(key) for key in _DIST_ENV}
    rdv: Path = tmp_path_factory.mktemp("crypten-bench") / "rdv"
    os.environ.update(
        DISTRIBUTED_BACKEND="gloo",
        RENDEZVOUS=f"file://{rdv}",
        WORLD_SIZE="1",
        RANK="0",
        GLOO_SOCKET_IFNAME="lo",
    )
    crypten = crypten_shim.ensure_initialized()
    try:
        yield
    finally:
        crypten.uninit()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    header = f"{'group':<20} {'benchmark':<44} {'median ms':>10} {'M elem/s':>10} {'GB/s':>7}"
    terminalreporter.section("throughput (uint64 ring data, median round)")
    terminalreporter.write_line(header)
    terminalreporter.write_line("-" * len(header))
    for r in sorted(_RESULTS, key=lambda r: (r.group, r.name)):
        terminalreporter.write_line(
            f"{r.group:<20} {r.name:<44} {r.median_s * 1e3:>10.3f} "
            f"{r.elements_per_s / 1e6:>10.1f} {r.gb_per_s:>7.2f}"
        )
