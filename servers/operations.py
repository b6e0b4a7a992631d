"""What a party runs beside the protocol: the audit log, metrics, the retention task,
the Admin service and the peer-reachability probe, wired into a server in three steps.

::

    ops = Operations.prepare(cluster, party, insecure=...)   # before the Aggregator
    aggregator = Aggregator(..., events=ops.events); aggregator.recover()
    ops.attach(aggregator, leader, grpc_server, peer_tls, metrics_address)
    ...servers start...
    ops.start()                                              # background tasks
    ops.stop()                                               # on shutdown
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.version import PROTOCOL_VERSION, package_version
from mpcagg.servers.admin import AdminService
from mpcagg.servers.audit import AuditLog, Signer
from mpcagg.servers.events import Observers
from mpcagg.servers.inventory import Inventory
from mpcagg.servers.metrics import (
    MetricsEvents,
    MetricsServer,
    PartyCollector,
    PeerProbe,
    start_metrics,
)
from mpcagg.servers.retention import Janitor
from mpcagg.servers.schema import SCHEMA_VERSION
from mpcagg.servers.startup import check_party_credentials
from mpcagg.v1 import admin_pb2_grpc

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator
    from mpcagg.servers.leader import Leader
    from mpcagg.servers.peers import PeerTls

log = logging.getLogger("mpcagg.server")


def banner(party: int | None = None) -> str:
    """The first log line of a server: what runs, and which versions it speaks."""
    who = f" party {party}" if party is not None else ""
    return (
        f"mpcagg {package_version()}{who} starting (peer protocol {PROTOCOL_VERSION}, "
        f"store schema {SCHEMA_VERSION})"
    )


class Operations:
    """One party's audit log, metrics, retention task, Admin service and peer probe."""

    def __init__(self, cluster: ClusterConfig, party: int, audit: AuditLog) -> None:
        self.cluster = cluster
        self.party = party
        self.audit = audit
        self.metrics_events = MetricsEvents()
        self.events = Observers(self.metrics_events, audit)
        self.janitor: Janitor | None = None
        self.metrics: MetricsServer | None = None
        self.collector: PartyCollector | None = None
        self._aggregator: Aggregator | None = None
        self._probe: PeerProbe | None = None
        self._created: dict[str, float] = {}

    @classmethod
    def prepare(cls, cluster: ClusterConfig, party: int, *, insecure: bool) -> Operations:
        """Check the party's credentials and open its audit log (signed with its TLS key).

        Raises :class:`ConfigError` (one line) for credentials that cannot work.
        """
        me = cluster.party(party)
        if me.data_dir is None:
            raise ConfigError(f"party {party} has no data_dir in the cluster file")
        signer = None
        if not insecure:
            check_party_credentials(cluster, party)
            if me.cert is not None and me.key is not None and cluster.tls is not None:
                signer = Signer(me.cert.read_bytes(), me.key.read_bytes())
        me.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(cluster, party, AuditLog(me.data_dir, party, signer))

    def attach(
        self,
        aggregator: Aggregator,
        leader: Leader | None,
        server: grpc.Server,
        peer_tls: PeerTls | None = None,
        metrics_address: str | None = None,
    ) -> None:
        """After recovery, before the servers start: write the audit records a crash left
        out, add the Admin service to ``server``, and bind ``/metrics`` (``metrics_address``,
        else the cluster file's ``[metrics] address``, else none). Raises
        :class:`ConfigError` if the metrics address cannot be bound."""
        self._aggregator = aggregator
        with Inventory(aggregator.storage.data_dir, self.party) as inventory:
            self.audit.reconcile(inventory, aggregator.storage.read_aggregate)
            self._created = {s.round_id: s.created_at for s in inventory.rounds()}
        self.janitor = Janitor(aggregator, self.cluster.retention, leader)
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(aggregator, leader, self.janitor, self.audit), server
        )
        cluster = self.cluster
        address = metrics_address or (cluster.metrics.address if cluster.metrics else None)
        if address is None:
            return
        credentials = None
        if peer_tls is not None:
            credentials = grpc.ssl_channel_credentials(peer_tls.ca, peer_tls.key, peer_tls.cert)

        def target(party: int) -> Callable[[], str]:
            return lambda: cluster.address_of(party, peer=True)

        targets = {p.id: target(p.id) for p in cluster.ordered_parties() if p.id != self.party}
        self._probe = PeerProbe(targets, credentials)
        self.collector = PartyCollector(
            aggregator.rounds, self._created_at, aggregator.storage.data_dir, self._probe
        )
        self.metrics = start_metrics(address, self.collector)

    def _created_at(self, round_id: str) -> float | None:
        created = self._created.get(round_id)
        if created is None and self._aggregator is not None:
            with Inventory(self._aggregator.storage.data_dir, self.party) as inventory:
                self._created = {s.round_id: s.created_at for s in inventory.rounds()}
            created = self._created.get(round_id)
        return created

    def start(self) -> None:
        """Start the retention task and the peer probe (once the servers serve)."""
        assert self.janitor is not None, "attach() first"
        self.janitor.start()
        if self._probe is not None:
            self._probe.start()

    def stop(self) -> None:
        """Stop the retention janitor, the peer probe and the metrics server, if running."""
        for task in (self.janitor, self._probe, self.metrics):
            if task is not None:
                task.stop()
