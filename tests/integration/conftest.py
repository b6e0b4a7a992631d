"""Integration fixtures: real server processes on 127.0.0.1 (port 0, mutual TLS).

A module shares one :class:`LocalCluster` where that is safe (distinct round ids);
:class:`Rig` wraps a cluster with what the tests do again and again: open a round,
submit through the real client, share and upload at the wire level to chosen
parties only, read every party's status, and compute the expected ring sum.

Every wait is bounded: RPCs time out after ``RPC_TIMEOUT_S``, client retries are
few, and polling helpers give up after a deadline.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from mpcagg import (
    Collector,
    Receipt,
    RetryPolicy,
    RoundState,
    RoundStatus,
    SecureAggregator,
    TensorLayout,
)
from mpcagg.clients.transport import Transport
from mpcagg.mpc import Seed, SharingContext, full_party_for, share
from mpcagg.mpc.ring import DTYPE
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.spec import RoundSpec
from mpcagg.protocol.state import UploadAck
from mpcagg.wire import framing as wire

RPC_TIMEOUT_S = 10.0
# min_cohort 1: some tests watch a single upload; the default floor (2) is tested in
# tests/security.
LIMITS: dict[str, Any] = {"rpc_timeout_s": RPC_TIMEOUT_S, "drain_timeout_s": 2.0, "min_cohort": 1}
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.5)
NO_RETRY = RetryPolicy(attempts=1)

FloatArray = npt.NDArray[np.float64]


@contextlib.contextmanager
def running_cluster(directory: Path, n_parties: int = 3, **kwargs: Any) -> Iterator[LocalCluster]:
    """A started cluster under ``directory`` (logs in ``party-<i>.log``), stopped after."""
    kwargs.setdefault("log_level", "WARNING")
    cluster = LocalCluster(directory, n_parties, limits=LIMITS, **kwargs)
    try:
        cluster.start(timeout=60.0)
        yield cluster
    finally:
        cluster.stop(timeout=10.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three parties shared by a module's tests (each test uses its own round ids)."""
    with running_cluster(tmp_path_factory.mktemp("cluster3")) as c:
        yield c


@pytest.fixture(scope="module")
def rig(cluster: LocalCluster) -> Iterator[Rig]:
    with Rig(cluster) as r:
        yield r


def closed_port() -> int:
    """A local TCP port nothing listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(
    check: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"gave up after {timeout}s waiting for {what or check}: last {last!r}")


def client_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{k}" for k in range(count)]


class Rig:
    """A cluster plus a collector and helpers; use as a context manager."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.config = cluster.config
        self.n = cluster.n_parties
        collector = cluster.client_kwargs("collector", "collector")
        self.collector = Collector(self.config, **collector, retry=FAST_RETRY)
        self.collector_wire = Transport(self.config, **collector, retry=NO_RETRY)
        self._transports: list[Transport] = [self.collector_wire]

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *_: object) -> None:
        self.collector.disconnect()
        for t in self._transports:
            t.close()

    # -- rounds ------------------------------------------------------------------------

    def open(
        self,
        round_id: str,
        shapes: Sequence[tuple[str, tuple[int, ...]]] = (("w", (16,)),),
        **kw: Any,
    ) -> RoundSpec:
        """Open ``round_id`` on every party (``kw`` as :meth:`Collector.open_round`)."""
        return self.collector.open_round(round_id, TensorLayout.from_shapes(shapes), **kw)

    def status(self, round_id: str) -> dict[int, RoundStatus]:
        return {info.party: info for info in self.collector.status(round_id)}

    def all_in(self, round_id: str, state: RoundState) -> dict[int, RoundStatus] | None:
        """Every party's status if all of them are in ``state``, else None (for polling)."""
        statuses = self.status(round_id)
        return statuses if {s.state for s in statuses.values()} == {state} else None

    def close(self, round_id: str, wait_s: float = 20.0) -> RoundStatus:
        return self.collector.close(round_id, wait_s=wait_s)

    def spool_files(self, party: int, round_id: str) -> list[str]:
        """Names of the files party ``party`` keeps for ``round_id`` (shares, temporaries)."""
        directory = self.cluster.directory / f"party-{party}" / "spool" / round_id
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    # -- trainers through the real client ----------------------------------------------

    def trainer(
        self, client_id: str, config: ClusterConfig | None = None, retry: RetryPolicy = FAST_RETRY
    ) -> SecureAggregator:
        return SecureAggregator(
            config or self.config,
            client_id,
            **self.cluster.client_kwargs(client_id),
            progress=False,
            retry=retry,
        )

    def submit(
        self, spec: RoundSpec, client_id: str, values: Mapping[str, Any], **kw: Any
    ) -> Receipt:
        with self.trainer(client_id, **kw) as t:
            return t.submit(spec, values)

    # -- trainers at the wire level ----------------------------------------------------

    def transport(self, client_id: str, retry: RetryPolicy = NO_RETRY) -> Transport:
        t = Transport(self.config, **self.cluster.client_kwargs(client_id), retry=retry)
        self._transports.append(t)
        return t

    def shares(
        self, round_id: str, client_id: str, encoded: npt.NDArray[np.uint64]
    ) -> list[wire.PartyUpload]:
        """One upload per party for ``encoded`` (fresh seeds), as the trainer client makes."""
        parts = share(
            encoded,
            self.n,
            full_party_for(client_id, self.n),
            [Seed.generate() for _ in range(self.n - 1)],
            SharingContext(round_id, client_id),
        )
        return [wire.PartyUpload.from_share(s) for s in parts]

    def upload(
        self,
        round_id: str,
        client_id: str,
        uploads: Sequence[wire.PartyUpload],
        parties: Iterable[int],
        sharing_id: bytes | None = None,
    ) -> dict[int, UploadAck]:
        """Upload ``uploads[p]`` to each party ``p`` in ``parties`` only; raises the first error."""
        sid = sharing_id if sharing_id is not None else secrets.token_bytes(16)
        t = self.transport(client_id)
        acks = {}
        for p in parties:
            messages = wire.upload_messages(
                uploads[p],
                round_id=round_id,
                client_id=client_id,
                sharing_id=sid,
                chunk_bytes=self.config.limits.chunk_bytes,
            )
            acks[p] = t.upload(p, messages)
        return acks

    def aggregate_share_error(self, party: int, round_id: str) -> Exception:
        """The error party ``party`` answers GetAggregateShare with (fails if it serves one)."""
        try:
            self.collector_wire.aggregate_share(party, round_id)
        except Exception as exc:
            return exc
        pytest.fail(f"party {party} served an aggregate share for round {round_id!r}")


def encode_all(spec: RoundSpec, inputs: Sequence[FloatArray]) -> list[npt.NDArray[np.uint64]]:
    return [spec.fixed_point.encode(x, bound=spec.bound) for x in inputs]


def ring_sum(vectors: Iterable[npt.NDArray[np.uint64]], length: int) -> npt.NDArray[np.uint64]:
    """Σ vectors mod 2^64 (numpy uint64 addition wraps)."""
    out = np.zeros(length, dtype=DTYPE)
    for v in vectors:
        np.add(out, v, out=out)
    return out


def exact_inputs(rng: np.random.Generator, count: int, length: int) -> list[FloatArray]:
    """Inputs that fixed point (16 bits) holds exactly, of both signs, so sums compare with ==."""
    return [rng.integers(-(1 << 19), 1 << 19, size=length) / 1024.0 for _ in range(count)]
