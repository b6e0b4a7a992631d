"""The audit log of one party: one signed record per round that committed or failed.

``<data_dir>/audit.jsonl`` holds one JSON object per line (canonical: sorted keys, no
spaces), appended and fsync'ed when a round finishes here::

    {"aggregate_digest": "…", "closed_at": …, "cohort_digest": "…", "cohort_size": 8,
     "created_at": …, "finished_at": …, "party": 0, "prev": "…", "reason": "",
     "recorded_at": …, "round_id": "r1", "seq": 12, "sig": "…", "signer": "…",
     "spec_digest": "…", "state": "COMMITTED", "v": 1}

- ``aggregate_digest``: SHA-256 of this party's aggregate share as written to disk
  (little-endian uint64; empty for FAILED). An aggregate share of one party is
  uniformly distributed, so its digest says nothing about any trainer.
- ``prev``: SHA-256 of the previous line's bytes (64 zeros for the first): a hash chain,
  so a record cannot be changed, dropped or reordered without breaking every later link.
- ``signer`` / ``sig``: the SHA-256 fingerprint of the party certificate and an
  ECDSA P-256 / SHA-256 signature (DER, base64) by the party's TLS private key over the
  record without ``sig``. Certificates that signed are kept in ``audit-certs/<fp>.pem``
  (the key rotates with the certificate; old records stay verifiable). A party
  running ``--insecure`` has no key and writes unsigned records (``signer`` empty).

Records are never pruned with their rounds: the chain stays whole. A record missing
after a crash (the round finished, the record was not yet written) is written at the
next start (:meth:`AuditLog.reconcile`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mpcagg.mpc.ring import RingVector, to_bytes
from mpcagg.protocol.admin import RoundSummary
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.identity import party_uri
from mpcagg.protocol.state import RoundState
from mpcagg.servers.inventory import Inventory
from mpcagg.servers.round import Round

log = logging.getLogger("mpcagg.audit")

AUDIT_FILE: Final = "audit.jsonl"
CERTS_DIR: Final = "audit-certs"
RECORD_VERSION: Final = 1
GENESIS: Final = "0" * 64


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of ``record`` (sorted keys, no spaces, ASCII): what is
    signed and chained.
    """
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_digest(line: bytes) -> str:
    """SHA-256 (hex) of one audit line's bytes: the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 (hex) over the DER encoding of a PEM certificate: a record's ``signer``.
    Raises ``ValueError`` for bytes that are not a PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def aggregate_digest(vector: RingVector) -> str:
    """SHA-256 of an aggregate share's little-endian bytes, read in 4 MiB runs."""
    h = hashlib.sha256()
    raw = to_bytes(vector)
    for start in range(0, len(raw), 4 << 20):
        h.update(raw[start : start + (4 << 20)])
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Signer:
    """A party's certificate and private key (EC P-256); not printable, not picklable."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Signer(..)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("Signer holds a private key and is not picklable")

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"audit records are signed with an EC key, got {type(key).__name__}")
        return key

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature (DER) over ``message`` (FIPS 186-5 §6.4).
        Raises :class:`ConfigError` if the key is not an EC key.
        """
        return self._key().sign(message, ec.ECDSA(hashes.SHA256()))


class AuditLog:
    """Appends signed, chained records to ``audit.jsonl``; thread-safe.

    It is a :class:`mpcagg.servers.events.RoundEvents` observer: ``committed`` and
    ``failed`` write a record, the other events are ignored.
    """

    def __init__(self, data_dir: Path, party: int, signer: Signer | None) -> None:
        self.data_dir = Path(data_dir)
        self.party = party
        self._signer = signer
        self._path = self.data_dir / AUDIT_FILE
        self._lock = threading.Lock()
        self._recorded: set[str] = set()
        self._seq = 0
        self._prev = GENESIS
        self._signer_fp = ""
        self._load()
        if signer is not None:
            self._signer_fp = fingerprint(signer.cert_pem)
            certs = self.data_dir / CERTS_DIR
            certs.mkdir(mode=0o700, exist_ok=True)
            path = certs / f"{self._signer_fp}.pem"
            if not path.exists():
                path.write_bytes(signer.cert_pem)

    def _load(self) -> None:
        if not self._path.exists():
            return
        data = self._path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a record cut short by a crash: never complete
            log.warning("audit log %s ends in a partial record; dropping it", self._path)
            with open(self._path, "r+b") as f:
                f.truncate(len(complete))
                os.fsync(f.fileno())
        for line in complete.splitlines():
            try:
                record = json.loads(line)
                self._recorded.add(str(record["round_id"]))
                self._seq = max(self._seq, int(record["seq"]))
            except (ValueError, KeyError, TypeError):
                pass  # shown by verification, not fixed here
            self._prev = line_digest(line)

    # --- events ---------------------------------------------------------------------------

    def upload(self, outcome: str, kind: str, nbytes: int) -> None:
        """Ignored: uploads are not audited (:class:`RoundEvents`)."""

    def closing(self, rnd: Round) -> None:
        """Ignored: only finished rounds are audited (:class:`RoundEvents`)."""

    def forgotten(self, round_id: str) -> None:
        """Ignored: records outlive pruned rounds, so the chain stays whole."""

    def committed(self, rnd: Round, aggregate: RingVector, seconds: float) -> None:
        """Append the round's COMMITTED record, with the digest of ``aggregate``."""
        self._write_for(rnd.spec.round_id, aggregate_digest(aggregate))

    def failed(self, rnd: Round) -> None:
        """Append the round's FAILED record (no aggregate digest)."""
        self._write_for(rnd.spec.round_id, "")

    def _write_for(self, round_id: str, agg_digest: str) -> None:
        with Inventory(self.data_dir, self.party) as inventory:
            summary = inventory.round(round_id)
        self.append(summary, agg_digest)

    # --- writing --------------------------------------------------------------------------

    def append(self, summary: RoundSummary, agg_digest: str) -> dict[str, Any] | None:
        """Write the record of a finished round (once per round; None if already there)."""
        if not summary.state.final:
            raise ValueError(f"round {summary.round_id!r} is {summary.state.value}, not finished")
        with self._lock:
            if summary.round_id in self._recorded:
                return None
            record: dict[str, Any] = {
                "v": RECORD_VERSION,
                "seq": self._seq + 1,
                "party": self.party,
                "round_id": summary.round_id,
                "state": summary.state.value,
                "reason": summary.reason,
                "spec_digest": summary.spec_digest.hex(),
                "cohort_digest": summary.cohort_digest.hex(),
                "cohort_size": summary.cohort_size,
                "aggregate_digest": agg_digest,
                "created_at": summary.created_at,
                "closed_at": summary.closed_at,
                "finished_at": summary.finished_at,
                "recorded_at": time.time(),
                "prev": self._prev,
                "signer": self._signer_fp,
            }
            sig = b"" if self._signer is None else self._signer.sign(canonical(record))
            record["sig"] = base64.b64encode(sig).decode()
            line = canonical(record)
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._recorded.add(summary.round_id)
            self._seq += 1
            self._prev = line_digest(line)
            return record

    def reconcile(self, inventory: Inventory, read_aggregate: Any) -> int:
        """Write the records missing for finished rounds (a crash between a round
        finishing and its record); ``read_aggregate(round_id)`` maps a committed
        round's aggregate share. Returns how many were written."""
        written = 0
        for summary in inventory.rounds():
            if not summary.state.final or summary.round_id in self._recorded:
                continue
            digest = ""
            if summary.state is RoundState.COMMITTED:
                digest = aggregate_digest(read_aggregate(summary.round_id))
            if self.append(summary, digest) is not None:
                written += 1
        if written:
            log.warning("wrote %d audit records missing after an interrupted run", written)
        return written

    # --- reading --------------------------------------------------------------------------

    def lines(self) -> list[bytes]:
        """Every line of ``audit.jsonl`` as written (bytes, no newline), oldest first."""
        with self._lock:
            return read_lines(self.data_dir)

    def certificates(self) -> dict[str, bytes]:
        """The certificates that signed records, PEM by fingerprint (``audit-certs/``)."""
        return read_certificates(self.data_dir)


def read_lines(data_dir: Path) -> list[bytes]:
    """The audit log's complete lines (an absent log has none)."""
    path = Path(data_dir) / AUDIT_FILE
    if not path.exists():
        return []
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines()


def read_certificates(data_dir: Path) -> dict[str, bytes]:
    """Fingerprint -> PEM of every certificate that signed records here."""
    directory = Path(data_dir) / CERTS_DIR
    if not directory.is_dir():
        return {}
    return {p.stem: p.read_bytes() for p in sorted(directory.glob("*.pem"))}


# --- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainCheck:
    """The outcome of :func:`verify`: ``ok`` when every link and signature holds."""

    records: int
    signed: int
    problems: tuple[str, ...]
    by_round: dict[str, dict[str, Any]]

    @property
    def ok(self) -> bool:
        """Whether the chain verified with no problem."""
        return not self.problems

    def describe(self) -> str:
        """One line for the operator: the counts if the chain holds, else the first problems."""
        if self.ok:
            unsigned = self.records - self.signed
            extra = f", {unsigned} unsigned (--insecure)" if unsigned else ""
            records = f"{self.records} record{'s' if self.records != 1 else ''}"
            signed = f"{self.signed} signature{'s' if self.signed != 1 else ''} valid"
            return f"chain ok ({records}, {signed}{extra})"
        return f"CHAIN BROKEN: {'; '.join(self.problems[:3])}" + (
            f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        )


def verify(
    lines: Iterable[bytes],
    certificates: Mapping[str, bytes],
    *,
    party: int,
    ca_pem: bytes | None = None,
    require_signatures: bool = False,
) -> ChainCheck:
    """Check party ``party``'s audit log: every line parses, links to the one before,
    counts up, belongs to ``party``, and (when signed) carries a valid signature by a
    certificate of ``certificates`` that names ``party`` (and, given ``ca_pem``, is
    issued by that CA)."""
    problems: list[str] = []
    prev = GENESIS
    signed = 0
    count = 0
    by_round: dict[str, dict[str, Any]] = {}
    keys: dict[str, ec.EllipticCurvePublicKey | str] = {}
    for index, line in enumerate(lines, start=1):
        count += 1
        where = f"record {index}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems.append(f"{where}: not a JSON record ({exc})")
            prev = line_digest(line)
            continue
        where = f"record {index} (round {record.get('round_id', '?')!r})"
        by_round[str(record.get("round_id"))] = record
        if record.get("prev") != prev:
            problems.append(f"{where}: does not link to the record before it")
        if record.get("seq") != index:
            problems.append(f"{where}: sequence number {record.get('seq')!r}, expected {index}")
        if record.get("party") != party:
            problems.append(f"{where}: written by party {record.get('party')!r}, not {party}")
        if canonical(record) != line:
            problems.append(f"{where}: not in canonical form (edited?)")
        prev = line_digest(line)
        fp = str(record.get("signer", ""))
        if not fp:
            if require_signatures:
                problems.append(f"{where}: unsigned")
            continue
        key = keys.get(fp)
        if key is None:
            key = keys[fp] = _signer_key(certificates.get(fp), fp, party, ca_pem)
        if isinstance(key, str):
            problems.append(f"{where}: {key}")
            continue
        body = {k: v for k, v in record.items() if k != "sig"}
        try:
            key.verify(
                base64.b64decode(str(record.get("sig", ""))),
                canonical(body),
                ec.ECDSA(hashes.SHA256()),
            )
            signed += 1
        except (InvalidSignature, ValueError):
            problems.append(f"{where}: the signature does not match the record")
    return ChainCheck(count, signed, tuple(problems), by_round)


def _signer_key(
    pem: bytes | None, fp: str, party: int, ca_pem: bytes | None
) -> ec.EllipticCurvePublicKey | str:
    """The public key of the certificate with fingerprint ``fp``, or why it is unusable."""
    if pem is None:
        return f"signed by certificate {fp[:16]}…, which is not available"
    try:
        if fingerprint(pem) != fp:
            return f"certificate {fp[:16]}… does not have that fingerprint"
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        if party_uri(party) not in uris:
            return f"certificate {fp[:16]}… does not name party {party}"
        if ca_pem is not None:
            ca = x509.load_pem_x509_certificate(ca_pem)
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError):
                return f"certificate {fp[:16]}… is not issued by the cluster CA"
        key = cert.public_key()
    except (ValueError, x509.ExtensionNotFound) as exc:
        return f"certificate {fp[:16]}… is unusable ({exc})"
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return f"certificate {fp[:16]}… has no EC key"
    return key
