"""The colluding parties of tests/security/test_collusion.py: parties 1 and 2 run in the
test's process and record every Aggregation call that reaches them (the caller's verified
certificate, its metadata, every upload message); party 0 is an ordinary server process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mpcagg import Collector, SecureAggregator
from mpcagg.ops.credentials import KeyPair, load_key_pair
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.cluster import load_cluster
from mpcagg.protocol.identity import Identity, client_from_auth_context
from mpcagg.protocol.spec import RoundSpec
from mpcagg.servers.server import RunningServer, create_server
from mpcagg.servers.service import AggregationService
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from tests.security.conftest import RPC_S

HONEST = 0
COLLUDERS = (1, 2)


# --- the colluders' recorder ------------------------------------------------------------


@dataclass
class Seen:
    """One call that reached a colluding party, as the colluders keep it."""

    party: int
    method: str
    client_pem: bytes | None
    """The caller's certificate (PEM) from the verified TLS connection."""
    identity: Identity | None
    metadata: dict[str, str]
    messages: list[pb.UploadMessage] = field(default_factory=list)


@dataclass
class Loot:
    """Everything trainers and the collector sent to parties 1 and 2."""

    calls: list[Seen] = field(default_factory=list)

    def record(self, servicer: AggregationService, method: str, context: Any) -> Seen:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or [None]
        seen = Seen(
            party=servicer.party,
            method=method,
            client_pem=pems[0],
            identity=client_from_auth_context(auth),
            metadata={k: str(v) for k, v in context.invocation_metadata() or ()},
        )
        self.calls.append(seen)
        return seen

    def certificate_of(self, client_id: str) -> bytes:
        """The certificate ``client_id`` presented to a colluder (the test fails if none)."""
        for seen in self.calls:
            if seen.identity is not None and seen.identity.client_id == client_id:
                assert seen.client_pem is not None
                return seen.client_pem
        raise AssertionError(f"the colluders never saw {client_id!r}")

    def headers(self, client_id: str) -> list[pb.UploadHeader]:
        return [
            m.header
            for seen in self.calls
            for m in seen.messages
            if m.WhichOneof("body") == "header" and m.header.client_id == client_id
        ]


def record_calls(loot: Loot, mp: pytest.MonkeyPatch) -> None:
    """Wrap the Aggregation servicer of the in-process (colluding) servers."""
    upload = AggregationService.Upload

    def recorded_upload(self: AggregationService, requests: Iterator[Any], context: Any) -> Any:
        seen = loot.record(self, "Upload", context)

        def tee() -> Iterator[Any]:
            for msg in requests:
                kept = pb.UploadMessage()
                kept.CopyFrom(msg)
                seen.messages.append(kept)
                yield msg

        return upload(self, tee(), context)

    mp.setattr(AggregationService, "Upload", recorded_upload)
    whole = AggregationService.UploadWhole

    def recorded_whole(self: AggregationService, request: Any, context: Any) -> Any:
        """The one-message upload, kept as the stream it stands for (header, chunk)."""
        seen = loot.record(self, "UploadWhole", context)
        seen.messages.append(pb.UploadMessage(header=request.header))
        if request.data:
            seen.messages.append(pb.UploadMessage(chunk=request.data))
        return whole(self, request, context)

    mp.setattr(AggregationService, "UploadWhole", recorded_whole)
    for name in ("CreateRound", "GetRound", "GetAggregateShare"):
        original = getattr(AggregationService, name)

        def recorded(
            self: AggregationService, request: Any, context: Any, _o: Any = original, _n: str = name
        ) -> Any:
            loot.record(self, _n, context)
            return _o(self, request, context)

        mp.setattr(AggregationService, name, recorded)


class ColludingCluster(LocalCluster):
    """Party 0 an honest server process; parties 1 and 2 in this process (recorded)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, 3, log_level="INFO")
        self.colluders: dict[int, RunningServer] = {}

    def start_party(self, party: int, *, wait: bool = True, timeout: float = 60.0) -> None:
        if party == HONEST:
            super().start_party(party, wait=wait, timeout=timeout)
            return
        running = create_server(load_cluster(self.cluster_file), party)
        self.colluders[party] = running
        port_file = self.directory / f"party-{party}.port"
        port_file.write_text(f"{running.port} {running.peer_port}\n")

    def stop(self, timeout: float = 30.0) -> dict[int, int]:
        codes = super().stop(timeout)
        for running in self.colluders.values():
            running.drain_timeout = 1.0
            running.stop()
        self.colluders.clear()
        return codes


# --- the world ------------------------------------------------------------------------------


@dataclass
class World:
    cluster: ColludingCluster
    loot: Loot
    collector: Collector
    spec: RoundSpec
    """The target round, open at every party, no upload yet."""
    updates: dict[str, np.ndarray]
    warm_up_share: list[pb.AggregateShareMessage]
    """Party 0's aggregate share of the warm-up round, as the honest collector got it."""

    def trainer(self, client_id: str) -> SecureAggregator:
        cfg = self.cluster.config
        return SecureAggregator(cfg, client_id, **self.cluster.client_kwargs(client_id))

    def genuine(self, client_id: str, role: str = "trainer") -> KeyPair:
        """The honest client's own certificate and key (only the test holds the key)."""
        files = self.cluster.client_files(client_id, role)
        assert files is not None
        return files.load()

    def colluder_pair(self, party: int = 1) -> KeyPair:
        certs = self.cluster.certs_dir
        return load_key_pair(certs / f"party-{party}.pem", certs / f"party-{party}-key.pem")

    def party0(self, client: KeyPair | None, *, peer: bool = False) -> Any:
        """A fresh stub for party 0 presenting ``client`` (or no certificate)."""
        p = self.cluster.config.party(HONEST)
        target = p.peer_address if peer else p.address
        ca = (self.cluster.certs_dir / "ca.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(
            ca,
            client.key_pem if client else None,
            client.cert_pem if client else None,
        )
        channel = grpc.secure_channel(target, creds)
        self._channels.append(channel)
        return pb_grpc.AggregationStub(channel)  # type: ignore[no-untyped-call]

    def log_count(self, reason: str) -> int:
        return self.cluster.log_text(HONEST).count(reason)

    def status(self, round_id: str) -> pb.RoundStatus:
        """Party 0's status of ``round_id``, as the honest collector reads it."""
        if self._honest is None:
            self._honest = self.party0(self.genuine("collector", "collector"))
        reply: pb.RoundStatus = self._honest.GetRound(
            pb.GetRoundRequest(round_id=round_id), timeout=RPC_S
        )
        return reply

    def close(self) -> None:
        """Close every channel :meth:`party0` opened."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    _channels: list[grpc.Channel] = field(default_factory=list)
    _honest: Any = None
