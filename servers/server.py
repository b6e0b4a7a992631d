"""Assemble and run one aggregation server (party) process.

Two gRPC servers share the process: the client port (``address``: Aggregation and
Health, for trainers and the collector) and the peer port (``peer_address``: Peer and
Health, for the other parties). Each service is reachable only on its own port. With
TLS both require a client certificate from the cluster CA (mutual TLS): on the client
port it names a trainer or the collector, on the peer port a party.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mpcagg.mpc.engines import get_engine
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.files import write_atomic
from mpcagg.protocol.identity import read_pem
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.auth import Authenticator, PeerAuthenticator
from mpcagg.servers.interceptor import ServiceInterceptor
from mpcagg.servers.leader import Leader
from mpcagg.servers.metrics import record_refusal
from mpcagg.servers.operations import Operations
from mpcagg.servers.peers import PeerTls, peer_clients
from mpcagg.servers.reveal import Revealer
from mpcagg.servers.reveal_service import attach_reveal
from mpcagg.servers.service import AggregationService, PeerService
from mpcagg.servers.startup import bind
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import unmap_large_allocations
from mpcagg.servers.versioning import VersionInterceptor
from mpcagg.v1 import aggregation_pb2_grpc, peer_pb2_grpc

log = logging.getLogger("mpcagg.server")

CONTROL_RPCS = 16
"""Worker threads beyond the upload cap, for everything that is not an upload."""


@dataclass
class RunningServer:
    """A started server: its ports and how to stop it."""

    party: int
    port: int
    peer_port: int
    grpc_server: grpc.Server
    """The client port's server (Aggregation, Health)."""
    peer_server: grpc.Server
    """The peer port's server (Peer, Health)."""
    aggregator: Aggregator
    leader: Leader | None
    health: health.HealthServicer
    storage: Storage
    drain_timeout: float
    operations: Operations | None = None
    """Audit log, metrics, retention, the Admin service (servers/operations.py)."""
    revealer: Revealer | None = None
    """Reveal mode ``servers``: the revealer (servers/reveal.py); its Group and Reveal
    services are registered by servers/reveal_service.py."""

    def stop(self) -> None:
        """Refuse new calls, let in-flight ones (uploads) finish within the drain timeout, stop."""
        self.health.enter_graceful_shutdown()
        if self.leader is not None:
            self.leader.stop()
        if self.operations is not None:
            self.operations.stop()
        if self.revealer is not None:
            self.revealer.stop()
        stopped = [s.stop(grace=self.drain_timeout) for s in (self.grpc_server, self.peer_server)]
        for event in stopped:
            event.wait(self.drain_timeout + 5)
        self.storage.close()


def create_server(
    cluster: ClusterConfig,
    party: int,
    *,
    insecure: bool = False,
    metrics_address: str | None = None,
) -> RunningServer:
    """Start party ``party`` of ``cluster`` in this process and return it (its ``port``
    and ``peer_port`` are the bound ports; a configured port 0 binds an ephemeral one).

    Usable in-process by tests; :func:`serve_forever` runs it until a signal. Raises
    :class:`ConfigError` for missing material or an address that cannot be bound.
    """
    me = cluster.party(party)
    if me.data_dir is None:
        raise ConfigError(f"party {party} has no data_dir in the cluster file")
    missing = [p.id for p in cluster.parties if p.peer_address is None]
    if missing:
        raise ConfigError(f"servers need peer_address for every party; missing for {missing}")
    tls = cluster.tls
    if tls is None and not insecure:
        raise ConfigError(
            "the cluster file has no [tls] section; servers refuse to run without TLS "
            "unless started with --insecure"
        )
    if tls is not None and (me.cert is None or me.key is None):
        raise ConfigError(f"party {party} needs cert and key in the cluster file for TLS")
    if insecure:
        log.warning(
            "RUNNING WITHOUT TLS OR AUTHENTICATION (--insecure): anyone who can reach this "
            "port can upload, close rounds and fetch aggregate shares. Development only."
        )
    limits = cluster.limits
    operations = Operations.prepare(cluster, party, insecure=insecure)  # checks credentials
    storage = Storage(me.data_dir)
    engine = get_engine(cluster.engine)
    aggregator = Aggregator(
        party, cluster.n_parties, storage, engine, limits, events=operations.events
    )
    replayed = aggregator.recover()
    if replayed:
        log.info("recovered %d acknowledged uploads from %s", replayed, me.data_dir)

    peer_tls = None
    if tls is not None and not insecure:
        assert me.cert is not None and me.key is not None
        peer_tls = PeerTls(ca=read_pem(tls.ca), cert=read_pem(me.cert), key=read_pem(me.key))

    peers = peer_clients(cluster, party, peer_tls)
    leader = Leader(aggregator, peers) if party == 0 else None
    options = [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    # Uploads are capped by the servicer at max_concurrent_streams with a clear error; the
    # rest of the pool keeps health checks and status queries answered while uploads are at
    # their cap (peer calls have a server of their own). gRPC's own limit is only a backstop.
    workers = limits.max_concurrent_streams + limits.max_aggregate_streams + CONTROL_RPCS
    interceptor = ServiceInterceptor(
        Authenticator(enforcing=peer_tls is not None),
        PeerAuthenticator(cluster.n_parties, enforcing=peer_tls is not None),
        on_refusal=record_refusal,
    )
    client_options = list(options)
    if limits.idle_connection_s > 0:
        client_options.append(("grpc.max_connection_idle_ms", int(limits.idle_connection_s * 1000)))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        options=client_options,
        maximum_concurrent_rpcs=workers,
        interceptors=[VersionInterceptor(), interceptor],
    )
    peer_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=CONTROL_RPCS, thread_name_prefix="peer-rpc"),
        options=options,
        interceptors=[VersionInterceptor(), interceptor],
    )
    aggregation_pb2_grpc.add_AggregationServicer_to_server(
        AggregationService(aggregator, leader, limits), server
    )
    peer_pb2_grpc.add_PeerServicer_to_server(PeerService(aggregator), peer_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, peer_server)
    operations.attach(aggregator, leader, server, peer_tls, metrics_address)
    revealer = attach_reveal(
        aggregator,
        peers,
        limits,
        me.data_dir,
        enforcing=peer_tls is not None,
        client_server=server,
        peer_server=peer_server,
        events=operations.events,
    )
    peer_bind = me.peer_bind
    assert peer_bind is not None  # checked above
    if peer_tls is None:
        port = bind(server, me.client_bind, "listen_address", None)
        peer_port = bind(peer_server, peer_bind, "peer_listen_address", None)
    else:
        # Both ports require a client certificate from the cluster CA: gRPC fills the
        # auth context's x509 entries (the caller's identity) only then.
        mutual_tls = grpc.ssl_server_credentials(
            [(peer_tls.key, peer_tls.cert)], root_certificates=peer_tls.ca, require_client_auth=True
        )
        port = bind(server, me.client_bind, "listen_address", mutual_tls)
        peer_port = bind(peer_server, peer_bind, "peer_listen_address", mutual_tls)
    server.start()
    peer_server.start()
    for name in ("", "mpcagg.v1.Aggregation", "mpcagg.v1.Peer"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if leader is not None:
        leader.start()
    operations.start()
    revealer.start()
    log.info(
        "party %d serving on port %d (peers: %d), engine %s", party, port, peer_port, engine.name
    )
    return RunningServer(
        party,
        port,
        peer_port,
        server,
        peer_server,
        aggregator,
        leader,
        health_servicer,
        storage,
        limits.drain_timeout_s,
        operations,
        revealer,
    )


def serve_forever(
    cluster: ClusterConfig,
    party: int,
    *,
    insecure: bool,
    port_file: Path | None,
    metrics_port: int | None = None,
    metrics_address: str | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain and exit. Metrics are served on
    ``metrics_address`` (or 127.0.0.1:``metrics_port``, or the cluster file's
    ``[metrics] address``)."""
    if metrics_address is None and metrics_port is not None:
        metrics_address = f"127.0.0.1:{metrics_port}"
    unmap_large_allocations()  # staged upload chunks go back to the system when freed
    running = create_server(cluster, party, insecure=insecure, metrics_address=metrics_address)
    if port_file is not None:
        write_atomic(port_file, f"{running.port} {running.peer_port}\n".encode(), 0o644)
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("signal %d: draining", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    while not stop.wait(0.5):
        pass
    started = time.monotonic()
    running.stop()
    log.info("party %d stopped after draining for %.1fs", party, time.monotonic() - started)
