"""Prometheus metrics of one party (served on ``[metrics] address`` / ``--metrics-address``).

Counters and histograms are process-wide (one party per process); the gauges are read
from the party's state at each scrape by :class:`PartyCollector`. No label carries a
client id, a round id or anything a trainer chose: labels are states, share kinds,
outcomes, gRPC codes and method names, and peer party indices.

======================================  =======  ==========================================
family                                  type     labels
======================================  =======  ==========================================
mpcagg_build_info                       gauge    version, protocol, schema
mpcagg_rounds                           gauge    state
mpcagg_uploads_total                    counter  outcome, share_kind
mpcagg_refusals_total                   counter  code, method
mpcagg_ingested_bytes_total             counter
mpcagg_uploads_in_flight                gauge
mpcagg_close_seconds                    hist.
mpcagg_commit_seconds                   hist.
mpcagg_peer_up                          gauge    peer
mpcagg_data_dir_bytes                   gauge
mpcagg_oldest_open_round_age_seconds    gauge
mpcagg_rounds_pruned_total              counter  why
mpcagg_audit_records_total              counter  state
======================================  =======  ==========================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.state import RoundState
from mpcagg.protocol.version import PROTOCOL_VERSION, package_version
from mpcagg.servers.periodic import Periodic
from mpcagg.servers.round import Round
from mpcagg.servers.schema import SCHEMA_VERSION

log = logging.getLogger("mpcagg.metrics")

UPLOADS = Counter(
    "mpcagg_uploads", "Uploads that ended, by outcome and share kind", ["outcome", "share_kind"]
)
REFUSALS = Counter(
    "mpcagg_refusals", "Calls refused with a gRPC status, by code and method", ["code", "method"]
)
INGESTED = Counter("mpcagg_ingested_bytes", "Share bytes durably received (seeds and full shares)")
_LATENCY = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CLOSE_SECONDS = Histogram(
    "mpcagg_close_seconds",
    "From a round's stop-accepting (CLOSING) to COMMITTED or FAILED at this party",
    buckets=_LATENCY,
)
COMMIT_SECONDS = Histogram(
    "mpcagg_commit_seconds",
    "This party's commit step: remove non-cohort shares, write the aggregate share durably",
    buckets=_LATENCY,
)
PRUNED = Counter("mpcagg_rounds_pruned", "Rounds removed by the retention policy", ["why"])
AUDITED = Counter("mpcagg_audit_records", "Audit records written", ["state"])

# Known label values start at 0, so a rate over them exists before the first event.
for _outcome in ("stored", "duplicate", "refused", "aborted"):
    for _kind in ("full", "seed"):
        UPLOADS.labels(outcome=_outcome, share_kind=_kind)
for _rule in ("open_max_age_days", "keep_rounds", "keep_days"):
    PRUNED.labels(why=_rule)
for _state in ("COMMITTED", "FAILED"):
    AUDITED.labels(state=_state)

METHODS = frozenset(
    {
        "CreateRound", "GetRound", "Upload", "UploadWhole", "CloseRound", "GetAggregateShare",
        "Manifest", "Commit", "Fail",
        "ListRounds", "ShowRound", "AbortRound", "PruneRounds", "GetAuditLog",
    }
)  # fmt: skip
"""Method names that may appear as a label value (anything else counts as ``other``)."""


def record_refusal(code: str, method: str, round_id: str, identity: str) -> None:
    """Count one refused call (the interceptor's ``on_refusal`` hook).

    ``code`` is the gRPC status name and ``method`` the RPC's short name; ``round_id``
    and ``identity`` are accepted for the log line the interceptor writes and are never
    used as label values (they are chosen by callers and unbounded).
    """
    del round_id, identity
    code = code if code.isupper() and code.replace("_", "").isalpha() else "UNKNOWN"
    REFUSALS.labels(code=code[:32], method=method if method in METHODS else "other").inc()


class MetricsEvents:
    """The :class:`mpcagg.servers.events.RoundEvents` observer feeding the counters."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._closing: dict[str, float] = {}
        self._lock = threading.Lock()

    def upload(self, outcome: str, kind: str, nbytes: int) -> None:
        """Count one upload by outcome and share kind; stored bytes count as ingested."""
        kind = kind if kind in ("full", "seed") else "unknown"
        UPLOADS.labels(outcome=outcome, share_kind=kind).inc()
        if outcome == "stored":
            INGESTED.inc(nbytes)

    def closing(self, rnd: Round) -> None:
        """Note when the round began closing (for ``mpcagg_close_seconds``)."""
        with self._lock:
            self._closing[rnd.spec.round_id] = self._clock()

    def committed(self, rnd: Round, aggregate: RingVector, seconds: float) -> None:
        """Observe the commit's duration and the close's; count the audit record."""
        COMMIT_SECONDS.observe(seconds)
        self._finished(rnd)
        AUDITED.labels(state="COMMITTED").inc()

    def failed(self, rnd: Round) -> None:
        """Observe the close's duration; count the audit record."""
        self._finished(rnd)
        AUDITED.labels(state="FAILED").inc()

    def forgotten(self, round_id: str) -> None:
        """Forget the round's closing time, if still held."""
        with self._lock:
            self._closing.pop(round_id, None)

    def _finished(self, rnd: Round) -> None:
        with self._lock:
            started = self._closing.pop(rnd.spec.round_id, None)
        if started is not None:
            CLOSE_SECONDS.observe(max(self._clock() - started, 0.0))


class PeerProbe:
    """Whether each other party answers health checks on its peer port, probed every
    ``interval`` seconds with this party's own credentials."""

    def __init__(
        self,
        targets: dict[int, Callable[[], str]],
        credentials: grpc.ChannelCredentials | None,
        interval: float = 15.0,
        timeout: float = 5.0,
    ) -> None:
        self._targets = targets
        self._credentials = credentials
        self._interval = interval
        self._timeout = timeout
        self.up: dict[int, bool] = dict.fromkeys(targets, False)
        self._periodic = Periodic(
            "peer-probe", interval, self.probe_once, first_wait=0.0, join_s=timeout + 1
        )

    def start(self) -> None:
        """Start probing every peer's health service in a background thread."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop probing and wait for the thread (at most the probe timeout + 1 s)."""
        self._periodic.stop()

    def probe_once(self) -> None:
        """Probe every peer once and set :attr:`up` per party (True: SERVING)."""
        for party, target in self._targets.items():
            self.up[party] = self._serving(target())

    def _serving(self, target: str) -> bool:
        if target.endswith(":0"):
            return False
        channel = (
            grpc.secure_channel(target, self._credentials)
            if self._credentials is not None
            else grpc.insecure_channel(target)
        )
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self._timeout
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False
        finally:
            channel.close()


class PartyCollector(Collector):
    """The gauges, read from the party's state at each scrape."""

    def __init__(
        self,
        rounds: Callable[[], Sequence[Round]],
        created_at: Callable[[str], float | None],
        data_dir: Path,
        probe: PeerProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rounds = rounds
        self._created_at = created_at
        self._data_dir = data_dir
        self._probe = probe
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        """Yield this party's gauges (build info, rounds by state, uploads in flight, oldest
        open round's age, data directory size, peers up), read at scrape time
        (prometheus_client ``Collector``)."""
        info = GaugeMetricFamily(
            "mpcagg_build_info",
            "The running mpcagg: package version, peer protocol, store schema",
            labels=["version", "protocol", "schema"],
        )
        info.add_metric([package_version(), str(PROTOCOL_VERSION), str(SCHEMA_VERSION)], 1)
        yield info
        rounds = list(self._rounds())
        by_state = GaugeMetricFamily("mpcagg_rounds", "Rounds held, by state", labels=["state"])
        counts = dict.fromkeys((s.value for s in RoundState if s is not RoundState.UNKNOWN), 0)
        inflight = 0
        oldest: float | None = None
        for rnd in rounds:
            counts[rnd.state.value] = counts.get(rnd.state.value, 0) + 1
            inflight += len(rnd.inflight)
            if rnd.state is RoundState.OPEN:
                created = self._created_at(rnd.spec.round_id)
                if created is not None:
                    oldest = created if oldest is None else min(oldest, created)
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        yield GaugeMetricFamily(
            "mpcagg_uploads_in_flight", "Upload streams being received now", value=inflight
        )
        yield GaugeMetricFamily(
            "mpcagg_oldest_open_round_age_seconds",
            "Age of the oldest OPEN round (0 when none is open)",
            value=0.0 if oldest is None else max(self._clock() - oldest, 0.0),
        )
        yield GaugeMetricFamily(
            "mpcagg_data_dir_bytes",
            "Bytes of files under the data directory (store, spool, aggregates, audit log)",
            value=directory_bytes(self._data_dir),
        )
        if self._probe is not None:
            peers = GaugeMetricFamily(
                "mpcagg_peer_up",
                "1 if the other party answered its last health check on the peer port",
                labels=["peer"],
            )
            for party, up in sorted(self._probe.up.items()):
                peers.add_metric([str(party)], 1.0 if up else 0.0)
            yield peers


def directory_bytes(root: Path) -> int:
    """Total size of the regular files under ``root`` (files vanishing meanwhile are skipped)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


class _ProcessWide(Collector):
    """Re-exposes the process-wide registry (counters, histograms, process_* and python_*)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class MetricsServer:
    """The ``/metrics`` HTTP endpoint of one party."""

    def __init__(self, address: str, party: PartyCollector) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self.registry = CollectorRegistry()
        self.registry.register(_ProcessWide())
        self.registry.register(party)
        try:
            self._server, self._thread = start_http_server(
                int(port), addr=host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {address}: {exc.strerror or exc}; choose another "
                "[metrics] address or --metrics-address"
            ) from None
        self.port = int(self._server.server_address[1])
        self.address = f"{host}:{self.port}" if ":" not in host else f"[{host}]:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()


def scrape_text(registry: CollectorRegistry) -> str:
    """The exposition text of ``registry`` (tests and ``mpcagg`` diagnostics)."""
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def start_metrics(address: str | None, party: PartyCollector) -> MetricsServer | None:
    """Serve ``/metrics`` on ``address`` (``host:port``; port 0 picks one), or nothing if
    ``address`` is None. Raises :class:`ConfigError` if the address cannot be bound.
    """
    if address is None:
        return None
    server = MetricsServer(address, party)
    log.info("prometheus metrics on http://%s/metrics", server.address)
    return server


__all__ = [
    "METHODS",
    "MetricsEvents",
    "MetricsServer",
    "PartyCollector",
    "PeerProbe",
    "directory_bytes",
    "record_refusal",
    "scrape_text",
    "start_metrics",
]
