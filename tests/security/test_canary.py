"""Canaries: nothing secret is ever logged, put into an error message or shown by a repr.

Known values are planted where secrets live: the trainers' updates (a distinctive
fixed-point pattern), their seeds (``mpc.Seed.generate`` patched to hand out seeds we
chose, so the full shares and every seed-expanded share are known too), and the private
keys of the servers, the trainers and the collector. A round then runs on a cluster logging at
DEBUG, a series of refused requests is provoked, and every server log line, every
client error (message, server details, notes), client-side log record and the repr of
every client object, spec, receipt, status and result is scanned for each secret in
hex, decimal, base64 (standard and URL-safe) and Python-repr forms.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.metrics import MetricWrapperBase

from mpcagg import ClientCredentials, Collector, RetryPolicy, SecureAggregator
from mpcagg.mpc import FullShare, Seed, SeedShare, SharingContext, full_party_for, share
from mpcagg.mpc.digest import payload_digest
from mpcagg.ops.credentials import CertFiles, KeyPair, create_ca, issue_client_cert
from mpcagg.protocol.spec import RoundSpec
from mpcagg.servers import metrics as metrics_module
from mpcagg.servers.logs import RedactFilter
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.framing import PartyUpload
from tests.security.canaries import (
    Observed,
    Secrets,
    bytes_forms,
    provoke,
    vector_forms,
)
from tests.security.conftest import RPC_S, SecureEnv, full_upload, start_env

pytestmark = pytest.mark.timeout(120)

ROUND = "canary"
TRAINERS = ("canary-a", "canary-b", "canary-c")
LENGTH = 6
BASE = 0x0BADC0FFEE  # encoded value of the first coordinate: ~765 thousand
SCALE = 1 << 16


def _update(k: int) -> np.ndarray:
    """Trainer k's update: exact binary fractions whose encodings are BASE + pattern."""
    ints = np.array([BASE + k * 0x1111 + j * 0x10101 for j in range(LENGTH)], dtype=np.int64)
    ints[-1] = -ints[-1]  # one negative value: its encoding wraps to 2^64 - v
    return ints.astype(np.float64) / SCALE


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"canary seed {label}".encode()).digest()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    directory = tmp_path_factory.mktemp("canary")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRPC_VERBOSITY", "debug")  # the C core logs at debug too
        for env in start_env(directory, log_level="DEBUG"):
            yield _run(env, mp, directory)


def _run(env: SecureEnv, mp: pytest.MonkeyPatch, directory: Path) -> Observed:
    secrets = Secrets()
    errors: dict[str, str] = {}
    reprs: dict[str, str] = {}
    share_files: dict[str, int] = {}
    handler = _ListHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        _round(env, mp, secrets, errors, reprs, share_files)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    certs = directory / "certs"
    for key_file in sorted(certs.glob("*key*.pem")):
        if "public" in key_file.name:
            continue
        body = [ln for ln in key_file.read_text().splitlines() if not ln.startswith("-----")]
        secrets.add(f"private key {key_file.name}", {"".join(body), *body})
    env.cluster.stop(timeout=20.0)  # flush and close the logs before reading them
    logs = {i: env.cluster.log_text(i) for i in range(env.n)}
    return Observed(secrets, logs, errors, reprs, "\n".join(handler.lines), share_files)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


def _round(
    env: SecureEnv,
    mp: pytest.MonkeyPatch,
    secrets: Secrets,
    errors: dict[str, str],
    reprs: dict[str, str],
    share_files: dict[str, int],
) -> None:
    cluster = env.cluster
    cfg = cluster.config
    files = {cid: _files(cluster.client_files(cid)) for cid in (*TRAINERS, "canary-raw")}
    collector_files = _files(cluster.client_files("collector", "collector"))
    creds = {cid: ClientCredentials.from_files(f.cert, f.key) for cid, f in files.items()}
    reprs |= {f"credentials {cid}": repr(c) for cid, c in creds.items()}

    planted: list[bytes] = []

    def generate(cls: type[Seed]) -> Seed:
        seed = _seed(f"#{len(planted)}")
        planted.append(seed)
        return Seed(seed)

    mp.setattr(Seed, "generate", classmethod(generate))

    collector = Collector(cfg, cert=collector_files.cert, key=collector_files.key)
    spec = collector.open_round(
        ROUND, {"w": np.zeros(LENGTH)}, min_clients=2, max_clients=8, bound=4e6
    )
    total = np.zeros(LENGTH)
    receipts = []
    for k, cid in enumerate(TRAINERS):
        update = _update(k)
        total += update
        before = len(planted)
        with SecureAggregator(cfg, cid, cert=creds[cid], progress=False) as trainer:
            receipts.append(trainer.submit(spec, {"w": update}))
            reprs[f"trainer {cid}"] = repr(trainer)
        seeds = planted[before:]
        assert len(seeds) == env.n - 1, "the trainer drew its seeds through Seed.generate"
        _plant_shares(secrets, spec, cid, update, seeds, reprs)

    # Refusals a trainer or collector can run into; each message is kept for the scan.
    other = 2 * _update(0)
    with SecureAggregator(cfg, TRAINERS[0], cert=creds[TRAINERS[0]], progress=False) as trainer:
        before = len(planted)
        provoke(errors, "conflicting re-upload", lambda: trainer.submit(spec, {"w": other}))
        _plant_shares(secrets, spec, TRAINERS[0], other, planted[before:], reprs)
    foreign = _foreign_credentials(TRAINERS[1])
    with SecureAggregator(cfg, cert=foreign, progress=False, retry=_ONCE) as trainer:
        provoke(errors, "foreign CA", lambda: trainer.submit(spec, {"w": _update(1)}))
    mismatched = files[TRAINERS[1]].cert, files[TRAINERS[2]].key
    provoke(
        errors,
        "another trainer's key",
        lambda: SecureAggregator(cfg, cert=mismatched[0], key=mismatched[1]),
    )
    provoke(
        errors,
        "someone else's certificate",
        lambda: SecureAggregator(cfg, "canary-z", cert=creds[TRAINERS[2]]),
    )
    provoke(errors, "result before commit", lambda: collector.result(ROUND, spec))
    _raw_refusals(env, secrets, errors)

    share_files |= _spool_modes(cluster.directory, "open")
    closed = collector.close(ROUND, wait_s=20)
    result = collector.result(ROUND, spec)
    share_files |= _spool_modes(cluster.directory, "committed")
    assert np.array_equal(result.sum["w"], total), "the canary round is exact"
    with SecureAggregator(cfg, TRAINERS[2], cert=creds[TRAINERS[2]], progress=False) as late:
        provoke(errors, "upload after commit", lambda: late.submit(spec, {"w": _update(2)}))
    trainer_fetch = Collector(cfg, client_id=TRAINERS[0], cert=creds[TRAINERS[0]])
    provoke(errors, "trainer fetches", lambda: trainer_fetch.aggregate_ring(ROUND))
    collector_pair = KeyPair(collector_files.cert.read_bytes(), collector_files.key.read_bytes())
    for party in range(env.n):  # what the collector receives
        msgs = list(
            env.agg(party, client=collector_pair).GetAggregateShare(
                pb.GetAggregateShareRequest(round_id=ROUND), timeout=RPC_S
            )
        )
        vector = np.frombuffer(b"".join(m.chunk for m in msgs[1:]), dtype="<u8")
        secrets.add(f"aggregate share of party {party}", vector_forms(vector))

    reprs |= {
        "collector": repr(collector),
        "trainer-fetch collector": repr(trainer_fetch),
        "spec": repr(spec),
        "closed": repr(closed),
        "status": repr(collector.status(ROUND)),
        "result": repr(result),
        "receipts": repr(receipts),
        "config": repr(cfg),
    }
    collector.disconnect()
    trainer_fetch.disconnect()


def _spool_modes(directory: Path, when: str) -> dict[str, int]:
    return {
        f"{when}: {path.relative_to(directory)}": path.stat().st_mode & 0o777
        for path in sorted(directory.glob("party-*/spool/**/*"))
        if path.is_file()
    }


def _plant_shares(
    secrets: Secrets,
    spec: RoundSpec,
    cid: str,
    update: np.ndarray,
    seeds: list[bytes],
    reprs: dict[str, str],
) -> None:
    """Record the update, its seeds and every share it was split into as secrets."""
    encoded = spec.fixed_point.encode(update, bound=spec.bound)
    secrets.add(f"{cid} update", vector_forms(encoded) | {repr(float(x)) for x in update})
    for i, seed in enumerate(seeds):
        secrets.add(f"{cid} seed {i}", bytes_forms(seed))
    shares = share(
        encoded,
        spec.n_parties,
        full_party_for(cid, spec.n_parties),
        [Seed(s) for s in seeds],
        SharingContext(spec.round_id, cid),
    )
    for s in shares:
        if isinstance(s, FullShare):
            secrets.add(f"{cid} full share", vector_forms(s.vector))
        else:
            assert isinstance(s, SeedShare)
            secrets.add(f"{cid} expanded share for party {s.party}", vector_forms(s.expand()))
        reprs[f"{cid} share {s.party}"] = repr(s) + repr(PartyUpload.from_share(s))


def _files(files: CertFiles | None) -> CertFiles:
    assert files is not None, "the canary cluster runs with TLS"
    return files


_ONCE = RetryPolicy(attempts=1)


def _foreign_credentials(client_id: str) -> ClientCredentials:
    """A certificate for ``client_id`` from a CA the cluster does not trust (same name)."""
    pair = issue_client_cert(create_ca("mpcagg dev CA"), client_id, "trainer")
    return ClientCredentials(pair.cert_pem, pair.key_pem)


def _raw_refusals(env: SecureEnv, secrets: Secrets, errors: dict[str, str]) -> None:
    """Malformed uploads whose payload is secret material: errors must not echo it."""
    cid = "canary-raw"
    raw_files = _files(env.cluster.client_files(cid))
    stub = env.agg(1, client=KeyPair(raw_files.cert.read_bytes(), raw_files.key.read_bytes()))
    seed = _seed("raw")
    secrets.add("raw seed", bytes_forms(seed))
    data = hashlib.sha512(b"canary raw share").digest()[:48]  # six ring elements
    secrets.add("raw full share", vector_forms(np.frombuffer(data, dtype="<u8")))

    def upload(name: str, msgs: list[pb.UploadMessage], client: Any = stub) -> None:
        provoke(errors, name, lambda: client.Upload(iter(msgs), timeout=RPC_S))

    def seed_header(seed_bytes: bytes, **kw: Any) -> pb.UploadHeader:
        fields: dict[str, Any] = {
            "round_id": ROUND,
            "client_id": cid,
            "sharing_id": b"\x05" * 16,
            "party": 1,
            "kind": pb.SEED,
            "length": LENGTH,
            "payload_digest": payload_digest(seed_bytes),
            "seed": seed_bytes,
        }
        return pb.UploadHeader(**{**fields, **kw})

    upload("seed too long", [pb.UploadMessage(header=seed_header(seed + b"!"))])
    upload("seed too short", [pb.UploadMessage(header=seed_header(seed[:31]))])
    upload("seed on a full share", [pb.UploadMessage(header=seed_header(seed, kind=pb.FULL))])
    upload(
        "seed digest mismatch",
        [pb.UploadMessage(header=seed_header(seed, payload_digest=b"\x00" * 32))],
    )
    upload(
        "seed then chunk",
        [pb.UploadMessage(header=seed_header(seed)), pb.UploadMessage(chunk=data)],
    )
    full = full_upload(ROUND, cid, 1, data)
    upload("full share past its length", [*full, pb.UploadMessage(chunk=data[:8])])
    upload("full share truncated", full[:-1])
    wrong = full_upload(ROUND, cid, 1, data)
    wrong[0].header.payload_digest = payload_digest(data[::-1])
    upload("full share digest mismatch", wrong)
    other = env.agg(1, client=env.client_pair(TRAINERS[0]))
    upload("certificate of another client", full, other)


# --- the scans -----------------------------------------------------------------------------


def test_the_canaries_are_planted(observed: Observed) -> None:
    """The scan can find what it looks for: the secrets are where the test put them."""
    names = set(observed.secrets.forms)
    assert {f"{c} full share" for c in TRAINERS} <= names
    assert sum(name.startswith("canary-a seed") for name in names) >= 2
    assert any(name.startswith("private key party-0") for name in names)
    assert {f"private key trainer-{c}-key.pem" for c in TRAINERS} <= names
    assert "private key collector-key.pem" in names
    assert len(observed.errors) >= 15
    # Positive control: a text holding a seed in any of the forms is caught.
    seed = _seed("#0")
    for form in (seed.hex(), base64.b64encode(seed).decode(), repr(seed)):
        assert observed.secrets.leaks(f"oops {form}")


@pytest.mark.parametrize("party", [0, 1, 2])
def test_server_logs_hold_no_secret(observed: Observed, party: int) -> None:
    log = observed.server_logs[party]
    assert "round canary created" in log, "the log is the one the round ran against"
    leaks = observed.secrets.leaks(log)
    assert not leaks, f"party {party} logged: {leaks[:5]}"


def test_client_errors_hold_no_secret(observed: Observed) -> None:
    leaky = {name: observed.secrets.leaks(text) for name, text in observed.errors.items()}
    assert not {name: found for name, found in leaky.items() if found}
    # The errors are the refusals they should be, and say why.
    assert "ALREADY_EXISTS" in observed.errors["conflicting re-upload"]
    assert "UNAVAILABLE" in observed.errors["foreign CA"]  # refused at the TLS handshake
    assert "not the private key" in observed.errors["another trainer's key"]
    assert "does not match the client certificate" in observed.errors["someone else's certificate"]
    assert "PERMISSION_DENIED" in observed.errors["certificate of another client"]
    assert re.search(r"32 bytes", observed.errors["seed too long"])


def test_reprs_hold_no_secret(observed: Observed) -> None:
    leaky = {name: observed.secrets.leaks(text) for name, text in observed.reprs.items()}
    assert not {name: found for name, found in leaky.items() if found}
    assert "Seed(..)" in observed.reprs["canary-a share 0"] + observed.reprs["canary-a share 1"]


def test_client_logs_hold_no_secret(observed: Observed) -> None:
    assert not observed.secrets.leaks(observed.client_logs)


def test_share_material_on_disk_is_owner_only(observed: Observed) -> None:
    files = observed.share_files
    assert any(name.startswith("open:") for name in files), "uploads were spooled"
    assert any(name.endswith("aggregate.bin") for name in files), "aggregates were written"
    assert {name: oct(mode) for name, mode in files.items() if mode & 0o077} == {}


def test_metrics_have_no_labels_that_could_carry_secrets() -> None:
    # Every label takes values from a closed set (servers/metrics.py): no id, no payload.
    # A refusal names a round and a caller; neither may become a label value.
    metrics_module.record_refusal("NOT_FOUND", "GetRound", "canary-round", "canary-trainer")
    metrics = [m for m in vars(metrics_module).values() if isinstance(m, MetricWrapperBase)]
    assert metrics
    allowed = {"party", "method", "code", "state", "outcome", "share_kind", "why"}
    for metric in metrics:
        samples = [s for family in metric.collect() for s in family.samples]
        # A labelled metric shows its labels only through its children (the module
        # creates its known label values at 0): one without samples would go unchecked.
        assert samples, f"{metric!r} exports nothing, so its labels go unseen"
        for sample in samples:
            assert set(sample.labels) - {"le"} <= allowed, sample  # "le": histogram buckets
            assert not any("canary" in str(v) for v in sample.labels.values()), sample


def test_the_log_redaction_filter_catches_private_keys() -> None:
    """The last line of defence in every server's log handler (servers.logs.configure)."""
    key_pem = create_ca().key_pem.decode()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("mpcagg.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("a key:\n%s", key_pem)
        logger.warning("two keys: %s and %s", key_pem, key_pem)
        logger.warning("no key here: -----BEGIN CERTIFICATE-----")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("<redacted>") == 3
    assert "PRIVATE KEY" not in text and key_pem.splitlines()[1] not in text
    assert "-----BEGIN CERTIFICATE-----" in text, "public material is left alone"
