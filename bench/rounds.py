"""One timed round, secure or plaintext, with simulated trainers in a thread pool.

Trainers run in the benchmark process, ``trainer_threads`` at a time. That is enough
to keep 2 cores busy without being client-bound: the heavy client work releases the
GIL (numpy's fixed-point encode and subtraction, AES-CTR in OpenSSL, SHA-256 over
large buffers), and uploads are I/O in gRPC's C core. Whether that held is reported
per round (``client_cpu_s``, the benchmark process's CPU time during the round).
Every trainer dials its own channels (as devices of a fleet do), so connection set-up
and TLS handshakes are part of its upload time, in both modes.

A round's latency runs from the first trainer starting to encode until the collector
holds the decoded sum, and splits into four wall-clock phases that add up to it:

- ``share_s`` and ``upload_s``: the trainer phase (first start → last acknowledgement),
  apportioned by the trainers' summed encode+share time versus their summed
  upload time (phases of different trainers overlap);
- ``close_s``: close → commit (leader's cohort agreement; a no-op close for plaintext);
- ``reveal_s``: fetching the aggregate share(s), summing and decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench import baseline
from bench.grid import Cell
from bench.procstats import ProcessMeter, ProcessRound
from mpcagg import ClientCredentials, Collector, SecureAggregator
from mpcagg.clients.results import Receipt
from mpcagg.mpc import FixedPoint
from mpcagg.mpc.ring import DTYPE, RingVector
from mpcagg.ops.credentials import KeyPair
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.state import RoundState

PRECISION_BITS = 16
BOUND = 1.0
"""Per-coordinate bound of the round; inputs are N(0, 0.01²), far inside it."""
TENSOR = "w"
DISTINCT_INPUTS = 4
"""Distinct input vectors; trainer i sends input i mod 4 (inputs are not the cost)."""


@dataclass
class RoundTiming:
    """One round of one mode."""

    mode: str  # "secure" | "plaintext" | "plaintext_f32"
    index: int
    warmup: bool
    total_s: float
    share_s: float
    upload_s: float
    close_s: float
    reveal_s: float
    trainer_share_s: float
    """Mean per trainer: encode + share (digests, the full share's first pass) — the
    client's CPU work (the receipt's ``phases``; for plaintext, the encode)."""
    trainer_upload_s: float
    """Mean per trainer: the rest of its submit (dial, round check, streams, acks)."""
    payload_bytes: float
    """Mean per trainer: serialized upload messages, all parties."""
    cohort: int
    processes: list[ProcessRound] = field(default_factory=list)
    result: Any = field(default=None, repr=False)
    """The decoded float64 sum (kept only for the last measured round)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "index": self.index,
            "warmup": self.warmup,
            "total_s": self.total_s,
            "share_s": self.share_s,
            "upload_s": self.upload_s,
            "close_s": self.close_s,
            "reveal_s": self.reveal_s,
            "trainer_share_s": self.trainer_share_s,
            "trainer_upload_s": self.trainer_upload_s,
            "payload_bytes": self.payload_bytes,
            "cohort": self.cohort,
            "processes": [p.as_dict() for p in self.processes],
        }


@dataclass(frozen=True)
class TrainerInputs:
    """The trainers' float32 updates and the exact expected ring sum."""

    vectors: tuple[np.ndarray, ...]
    trainers: int
    fixed_point: FixedPoint

    @classmethod
    def generate(cls, trainers: int, dim: int, seed: int = 0) -> TrainerInputs:
        rng = np.random.default_rng(seed)  # benchmark data, not secret
        k = min(trainers, DISTINCT_INPUTS)
        vectors = tuple(
            (rng.standard_normal(dim, dtype=np.float32) * np.float32(0.01)) for _ in range(k)
        )
        return cls(vectors, trainers, FixedPoint(PRECISION_BITS))

    def of(self, trainer: int) -> np.ndarray:
        return self.vectors[trainer % len(self.vectors)]

    def expected_ring(self) -> RingVector:
        """Σ_i encode(x_i) mod 2^64, computed locally."""
        total = np.zeros(len(self.vectors[0]), dtype=DTYPE)
        for k, vec in enumerate(self.vectors):
            count = len(range(k, self.trainers, len(self.vectors)))
            enc = self.fixed_point.encode(vec, bound=BOUND)
            total += enc * np.uint64(count)
        return total

    def expected_sum(self) -> np.ndarray:
        return self.fixed_point.decode(self.expected_ring())


@dataclass
class _TrainerRun:
    share_s: float
    total_s: float
    payload_bytes: int


def _run_trainers(
    pool: ThreadPoolExecutor, trainers: int, task: Callable[[int], _TrainerRun]
) -> tuple[float, list[_TrainerRun]]:
    """Run every trainer; returns (wall time from first start to last ack, runs)."""
    t0 = time.perf_counter()
    runs = list(pool.map(task, range(trainers)))
    return time.perf_counter() - t0, runs


def _split(wall: float, runs: Sequence[_TrainerRun]) -> tuple[float, float, float, float]:
    """(share wall, upload wall, mean share per trainer, mean upload per trainer)."""
    share = sum(r.share_s for r in runs)
    upload = sum(r.total_s - r.share_s for r in runs)
    frac = share / (share + upload) if share + upload > 0 else 0.0
    return wall * frac, wall * (1 - frac), share / len(runs), upload / len(runs)


def _timing(
    mode: str,
    index: int,
    warmup: bool,
    wall: float,
    marks: tuple[float, float, float],
    runs: Sequence[_TrainerRun],
    cohort: int,
    processes: Any,
    result: Any,
) -> RoundTiming:
    """A round's timing from the trainers' wall time and the close/reveal marks."""
    t1, t2, t3 = marks
    share_w, upload_w, share_t, upload_t = _split(wall, runs)
    return RoundTiming(
        mode=mode,
        index=index,
        warmup=warmup,
        total_s=wall + (t3 - t1),
        share_s=share_w,
        upload_s=upload_w,
        close_s=t2 - t1,
        reveal_s=t3 - t2,
        trainer_share_s=share_t,
        trainer_upload_s=upload_t,
        payload_bytes=float(np.mean([r.payload_bytes for r in runs])),
        cohort=cohort,
        processes=processes,
        result=result,
    )


class SecureRounds:
    """Rounds on a real cluster: real trainer and collector clients."""

    def __init__(
        self,
        cell: Cell,
        config: ClusterConfig,
        credentials: Sequence[ClientCredentials | None],
        collector: ClientCredentials | None,
        inputs: TrainerInputs,
        pool: ThreadPoolExecutor,
        meter: ProcessMeter,
        keep_connections: bool = False,
    ) -> None:
        """``credentials[i]``: trainer i's client certificate (None without TLS)."""
        self.cell = cell
        self.config = config
        self.credentials = credentials
        self.inputs = inputs
        self.pool = pool
        self.meter = meter
        self.collector = Collector(config, cert=collector)
        self.keep = keep_connections
        self._kept: dict[int, SecureAggregator] = {}

    def close(self) -> None:
        self.collector.disconnect()
        for agg in self._kept.values():
            agg.disconnect()

    def run(self, index: int, *, warmup: bool, probe: ClusterConfig | None = None) -> RoundTiming:
        """One round; with ``probe``, trainer 0 dials through that (relayed) config."""
        cell = self.cell
        rid = f"bench-{index:03d}"
        spec = self.collector.open_round(
            rid,
            {TENSOR: np.zeros(cell.dim, dtype=np.float32)},
            min_clients=cell.trainers,
            max_clients=cell.trainers,
            bound=BOUND,
            precision_bits=PRECISION_BITS,
        )

        def trainer(i: int) -> _TrainerRun:
            probing = probe is not None and i == 0
            config = probe if probe is not None and probing else self.config
            keep = self.keep and not probing
            agg = self._kept.get(i) if keep else None
            if agg is None:
                agg = SecureAggregator(
                    config, f"trainer-{i:04d}", cert=self.credentials[i], progress=False
                )
                if keep:
                    self._kept[i] = agg
            try:
                receipt: Receipt = agg.submit(spec, {TENSOR: self.inputs.of(i)})
            finally:
                if not keep:
                    agg.disconnect()
            if not receipt.complete:
                raise RuntimeError(f"trainer {i} was not acknowledged by every party: {receipt}")
            encode_s = receipt.phases.get("encode_s", 0.0)
            return _TrainerRun(
                encode_s + receipt.phases.get("share_s", 0.0),
                encode_s + receipt.duration_s,
                sum(receipt.bytes_sent.values()),
            )

        self.meter.start()
        wall, runs = _run_trainers(self.pool, cell.trainers, trainer)
        t1 = time.perf_counter()
        info = self.collector.close(rid, wait_s=600.0)
        t2 = time.perf_counter()
        if info.state is not RoundState.COMMITTED:
            raise RuntimeError(f"round {rid} did not commit: {info.state.name} {info.reason}")
        result = self.collector.result(rid, spec)
        t3 = time.perf_counter()
        processes = self.meter.stop()
        return _timing(
            "secure", index, warmup, wall, (t1, t2, t3), runs,
            result.cohort_size, processes, result.sum[TENSOR],
        )  # fmt: skip


class PlainRounds:
    """Rounds against the baseline server: encode, upload int64 fixed point, sum; or, with
    ``float32``, upload the float32 update as it is (4 bytes per parameter) and sum that."""

    def __init__(
        self,
        cell: Cell,
        server: baseline.BaselineServer,
        credentials: Sequence[KeyPair | None],
        collector: KeyPair | None,
        inputs: TrainerInputs,
        pool: ThreadPoolExecutor,
        meter: ProcessMeter,
        chunk_bytes: int,
        keep_connections: bool = False,
        float32: bool = False,
    ) -> None:
        """``credentials[i]``: trainer i's client certificate (None without TLS)."""
        self.cell = cell
        self.float32 = float32
        self.mode = "plaintext_f32" if float32 else "plaintext"
        self.server = server
        self.credentials = credentials
        self.inputs = inputs
        self.pool = pool
        self.meter = meter
        self.chunk_bytes = chunk_bytes
        self._collector = server.channel(collector)
        self.keep = keep_connections
        self._kept: dict[int, grpc.Channel] = {}

    def close(self) -> None:
        self._collector.close()
        for channel in self._kept.values():
            channel.close()

    def run(self, index: int, *, warmup: bool, probe: str | None = None) -> RoundTiming:
        """One round; with ``probe`` (an address), trainer 0 dials it instead."""
        cell = self.cell
        rid = f"{self.mode}-{cell.trainers}-{cell.dim}-{cell.parties}-{index:03d}"
        fp = self.inputs.fixed_point

        def trainer(i: int) -> _TrainerRun:
            t0 = time.perf_counter()
            encoded = self.inputs.of(i) if self.float32 else fp.encode(self.inputs.of(i), BOUND)
            t1 = time.perf_counter()
            probing = probe is not None and i == 0
            keep = self.keep and not probing
            channel = self._kept.get(i) if keep else None
            if channel is None:
                channel = self.server.channel(self.credentials[i], probe if probing else None)
                if keep:
                    self._kept[i] = channel
            try:
                sent = baseline.upload(channel, rid, f"trainer-{i:04d}", encoded, self.chunk_bytes)
            finally:
                if not keep:
                    channel.close()
            return _TrainerRun(t1 - t0, time.perf_counter() - t0, sent)

        self.meter.start()
        wall, runs = _run_trainers(self.pool, cell.trainers, trainer)
        t1 = time.perf_counter()
        received = baseline.close(self._collector, rid)
        t2 = time.perf_counter()
        if self.float32:
            total = baseline.fetch_sum(self._collector, rid, np.float32).astype(np.float64)
        else:
            total = fp.decode(baseline.fetch_sum(self._collector, rid))
        t3 = time.perf_counter()
        processes = self.meter.stop()
        return _timing(
            self.mode, index, warmup, wall, (t1, t2, t3), runs, received, processes, total
        )
