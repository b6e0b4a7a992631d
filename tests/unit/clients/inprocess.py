"""A real cluster in this process: every party is :func:`create_server` on 127.0.0.1
(ephemeral ports, ``--insecure``), sharing one cluster file that is rewritten with the
bound ports as parties start, exactly as separate processes would see it."""

from __future__ import annotations

from pathlib import Path

from mpcagg.protocol.cluster import ClusterConfig, Limits, PartyConfig, dump_cluster, load_cluster
from mpcagg.servers.server import RunningServer, create_server


class InProcessCluster:
    def __init__(self, directory: Path, n: int = 3, **limits: object) -> None:
        self.file = directory / "cluster.toml"
        base = {"min_cohort": 1, "rpc_timeout_s": 10.0, "drain_timeout_s": 1.0, **limits}
        parties = [
            PartyConfig(
                id=i,
                address="127.0.0.1:0",
                peer_address="127.0.0.1:0",
                data_dir=directory / f"party-{i}",
            )
            for i in range(n)
        ]
        self.file.write_text(
            dump_cluster(ClusterConfig(name="inproc", limits=Limits(**base), parties=parties))
        )
        self.servers: dict[int, RunningServer] = {}
        for i in range(n):
            self.start(i)

    @property
    def config(self) -> ClusterConfig:
        return load_cluster(self.file)

    def start(self, party: int) -> None:
        running = create_server(self.config, party, insecure=True)
        self.servers[party] = running
        config = self.config
        parties = [
            p.model_copy(
                update={
                    "address": f"127.0.0.1:{running.port}",
                    "peer_address": f"127.0.0.1:{running.peer_port}",
                }
            )
            if p.id == party
            else p
            for p in config.parties
        ]
        self.file.write_text(dump_cluster(config.model_copy(update={"parties": parties})))

    def stop(self, party: int) -> None:
        self.servers.pop(party).stop()

    def stop_all(self) -> None:
        for party in list(self.servers):
            self.stop(party)
