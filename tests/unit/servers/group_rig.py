"""Parties in this process with mutual TLS: :func:`create_server` on 127.0.0.1 with a
development CA, sharing one cluster file that is rewritten with the bound ports as each
party starts (as separate processes would see it). For the reveal's tests: a party can
be stopped and started again on its data directory."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import mpcagg.mpc as mpc
from mpcagg import Collector, SecureAggregator, TensorLayout
from mpcagg.clients.transport import RetryPolicy, Transport
from mpcagg.ops.credentials import provision_client, provision_dev
from mpcagg.protocol.cluster import (
    ClusterConfig,
    Limits,
    PartyConfig,
    TlsConfig,
    dump_cluster,
    load_cluster,
)
from mpcagg.protocol.group import RevealState, RevealStatus
from mpcagg.protocol.spec import RoundSpec
from mpcagg.servers.server import RunningServer, create_server
from mpcagg.wire import framing

FAST = RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.3)


class TlsCluster:
    def __init__(self, directory: Path, n: int = 3, engine: str = "numpy", **limits: Any) -> None:
        self.directory = directory
        self.n = n
        self.file = directory / "cluster.toml"
        self.certs = directory / "certs"
        creds = provision_dev(self.certs, n)
        base = {"min_cohort": 1, "rpc_timeout_s": 5.0, "drain_timeout_s": 1.0, **limits}
        parties = [
            PartyConfig(
                id=i,
                address="127.0.0.1:0",
                peer_address="127.0.0.1:0",
                data_dir=directory / f"party-{i}",
                cert=creds.parties[i].cert,
                key=creds.parties[i].key,
            )
            for i in range(n)
        ]
        config = ClusterConfig(
            name="group",
            engine=engine,  # type: ignore[arg-type]
            tls=TlsConfig(ca=creds.ca_cert),
            limits=Limits(**base),
            parties=parties,
        )
        self.file.write_text(dump_cluster(config))
        self.servers: dict[int, RunningServer] = {}
        for i in range(n):
            self.start(i)

    @property
    def config(self) -> ClusterConfig:
        return load_cluster(self.file)

    def data_dir(self, party: int) -> Path:
        return self.directory / f"party-{party}"

    def start(self, party: int) -> None:
        running = create_server(self.config, party)
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

    # --- clients ------------------------------------------------------------------------

    def client_kwargs(self, client_id: str, role: str = "trainer") -> dict[str, Path]:
        files = provision_client(self.certs, client_id, role)
        return {"cert": files.cert, "key": files.key}

    def collector(self) -> Collector:
        return Collector(self.config, **self.client_kwargs("collector", "collector"), retry=FAST)

    def trainer(self, client_id: str) -> SecureAggregator:
        kwargs = self.client_kwargs(client_id)
        return SecureAggregator(self.config, client_id, **kwargs, progress=False, retry=FAST)

    def open(self, round_id: str, length: int, **kw: Any) -> RoundSpec:
        with self.collector() as c:
            return c.open_round(
                round_id, TensorLayout.from_shapes([("w", (length,))]), min_clients=2, **kw
            )

    def submit(self, spec: RoundSpec, inputs: Sequence[npt.NDArray[np.float64]]) -> None:
        for k, x in enumerate(inputs):
            with self.trainer(f"t-{k}") as t:
                assert t.submit(spec, {"w": x}).complete

    def upload_to(self, spec: RoundSpec, client_id: str, x: Any, parties: Iterable[int]) -> None:
        """A trainer that reaches only ``parties`` (it is left out of the cohort)."""
        encoded = spec.fixed_point.encode(x, bound=spec.bound)
        ctx = mpc.SharingContext(spec.round_id, client_id)
        seeds = [mpc.Seed.generate() for _ in range(self.n - 1)]
        shares = mpc.share(encoded, self.n, mpc.full_party_for(client_id, self.n), seeds, ctx)
        sid = secrets.token_bytes(16)
        with Transport(self.config, **self.client_kwargs(client_id), retry=FAST) as t:
            for p in parties:
                messages = framing.upload_messages(
                    framing.PartyUpload.from_share(shares[p]),
                    round_id=spec.round_id,
                    client_id=client_id,
                    sharing_id=sid,
                    chunk_bytes=self.config.limits.chunk_bytes,
                )
                t.upload(p, messages)

    def reveal_states(self, round_id: str) -> list[RevealStatus]:
        with self.collector() as c:
            return c.reveal_status(round_id)

    def wait_reveal(
        self, round_id: str, states: set[RevealState], timeout: float = 20.0
    ) -> list[RevealStatus]:
        """Every party's reveal status once all are in ``states`` (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        last: list[RevealStatus] = []
        while time.monotonic() < deadline:
            last = self.reveal_states(round_id)
            if {s.state for s in last} <= states:
                return last
            time.sleep(0.1)
        raise AssertionError(f"reveal of {round_id} did not reach {states}: {last}")


def exact_inputs(rng: np.random.Generator, count: int, length: int) -> list[npt.NDArray[Any]]:
    """Inputs fixed point (16 bits) holds exactly, of both signs."""
    return [rng.integers(-(1 << 19), 1 << 19, size=length) / 1024.0 for _ in range(count)]


def ring_sum(spec: RoundSpec, inputs: Sequence[Any]) -> npt.NDArray[np.uint64]:
    return mpc.ring.total(
        [spec.fixed_point.encode(x, bound=spec.bound) for x in inputs], spec.length
    )
