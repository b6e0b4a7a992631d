"""In-process parties for the unit tests of operations (audit, retention, admin, metrics):
real aggregators, storage, audit logs signed with real party keys, peers called directly.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mpcagg.mpc as mpc
from mpcagg.mpc.digest import payload_digest
from mpcagg.mpc.engines import NumpyEngine
from mpcagg.ops.credentials import DevCredentials, provision_dev
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import Unavailable
from mpcagg.protocol.spec import Holding, RoundSpec, TensorSpec
from mpcagg.protocol.state import Manifest, ShareKind, UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.audit import AuditLog, Signer
from mpcagg.servers.events import Observers
from mpcagg.servers.leader import Leader
from mpcagg.servers.metrics import MetricsEvents
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import UploadSession

N = 3
LENGTH = 8


class Peer:
    """Another party's aggregator, called directly; ``down`` makes it unreachable."""

    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg
        self.party = agg.party
        self.down = False
        self.down_on_commit = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable(f"party {self.party} unreachable")

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        self._check()
        return self.agg.manifest(round_id, spec_digest)

    def commit(
        self, round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec: bytes
    ) -> None:
        self._check()
        if self.down_on_commit:
            raise Unavailable(f"party {self.party} went down")
        self.agg.commit(round_id, cohort, digest, spec)

    def fail(self, round_id: str, reason: str) -> None:
        self._check()
        self.agg.fail(round_id, reason)


@dataclass
class Parties:
    root: Path
    creds: DevCredentials
    aggs: list[Aggregator] = field(default_factory=list)
    audits: list[AuditLog] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)
    leader: Leader | None = None
    clock: list[float] = field(default_factory=lambda: [time.time()])  # the store's clock too

    def data_dir(self, party: int) -> Path:
        return self.root / f"p{party}"

    def start(self, party: int) -> Aggregator:
        signer = Signer(
            self.creds.parties[party].cert.read_bytes(), self.creds.parties[party].key.read_bytes()
        )
        self.data_dir(party).mkdir(parents=True, exist_ok=True)
        audit = AuditLog(self.data_dir(party), party, signer)
        agg = Aggregator(
            party,
            N,
            Storage(self.data_dir(party)),
            NumpyEngine(),
            Limits(min_cohort=1),
            clock=lambda: self.clock[0],
            events=Observers(MetricsEvents(), audit),
        )
        agg.recover()
        if party < len(self.aggs):
            self.aggs[party], self.audits[party] = agg, audit
        else:
            self.aggs.append(agg)
            self.audits.append(audit)
        return agg

    def restart(self, party: int) -> Aggregator:
        self.aggs[party].storage.close()
        return self.start(party)

    def close_all(self) -> None:
        for a in self.aggs:
            a.storage.close()

    def make_leader(self) -> Leader:
        self.peers = [Peer(a) for a in self.aggs[1:]]
        self.leader = Leader(self.aggs[0], self.peers)  # type: ignore[arg-type]
        return self.leader

    def open(self, round_id: str, **kw: object) -> RoundSpec:
        spec = RoundSpec(round_id, (TensorSpec("w", (LENGTH,)),), N, min_clients=1, **kw)  # type: ignore[arg-type]
        for a in self.aggs:
            a.create_round(spec)
        return spec

    def upload(self, spec: RoundSpec, client: str, value: int, to: set[int] | None = None) -> None:
        encoded = np.full(LENGTH, value, dtype=np.uint64)
        shares = mpc.share(
            encoded,
            N,
            mpc.full_party_for(client, N),
            [mpc.Seed(_seed(spec.round_id, client, i)) for i in range(N - 1)],  # replayable
            mpc.SharingContext(spec.round_id, client),
        )
        sharing = b"s" * 16
        for s in shares:
            if to is not None and s.party not in to:
                continue
            if isinstance(s, mpc.SeedShare):
                seed = s.seed.expose()
                header = UploadHeader(
                    spec.round_id, client, sharing, s.party, ShareKind.SEED, LENGTH,
                    payload_digest(seed), seed,
                )  # fmt: skip
                session = self.aggs[s.party].begin_upload(header)
            else:
                raw = s.vector.tobytes()
                header = UploadHeader(
                    spec.round_id, client, sharing, s.party, ShareKind.FULL, LENGTH,
                    payload_digest(raw),
                )  # fmt: skip
                session = self.aggs[s.party].begin_upload(header)
                if isinstance(session, UploadSession):
                    session.add_chunk(raw)
            if isinstance(session, UploadSession):  # else: a receipt for an identical retry
                session.finish()

    def revealed(self, round_id: str) -> np.ndarray:
        total = np.zeros(LENGTH, dtype=np.uint64)
        for a in self.aggs:
            total += a.aggregate_share(round_id)[1]
        return total


def _seed(round_id: str, client: str, index: int) -> bytes:
    """Fixed per round, client and party, so uploading again is an identical retry."""
    return hashlib.sha256(f"{round_id}/{client}/{index}".encode()).digest()


def parties(root: Path) -> Parties:
    creds = provision_dev(root / "certs", N, hosts=("127.0.0.1",))
    rig = Parties(root, creds)
    for p in range(N):
        rig.start(p)
    rig.make_leader()
    return rig
