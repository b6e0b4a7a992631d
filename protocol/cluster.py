"""The cluster file: typed, validated on load, unknown keys refused by name.

Example (paths are relative to the file's own directory)::

    name = "local"
    engine = "numpy"                  # or "crypten"

    [tls]                              # absent: plaintext (servers then need --insecure)
    ca = "certs/ca.pem"                # verifies servers, parties and client certificates

    [limits]
    max_vector_length = 100_000_000

    [metrics]                          # absent: no metrics endpoint (or --metrics-address)
    address = "127.0.0.1:9464"         # Prometheus /metrics of the server reading this file

    [retention]                        # what each server's periodic clean-up removes
    keep_rounds = 0                    # finished rounds kept (0: no count limit)
    keep_days = 30                     # finished rounds kept this long (0: forever)
    open_max_age_days = 7              # OPEN rounds without a deadline fail after this

    [[parties]]
    id = 0
    address = "127.0.0.1:50051"         # trainers and the collector dial this (mutual TLS)
    peer_address = "127.0.0.1:50061"    # other parties only dial this (mutual TLS)
    listen_address = "0.0.0.0:50051"    # server side only: what it binds (default: address)
    peer_listen_address = "0.0.0.0:50061"  # server side only (default: peer_address)
    data_dir = "data/party-0"          # server side only
    cert = "certs/party-0.pem"         # server side only
    key = "certs/party-0-key.pem"      # server side only

``address`` and ``peer_address`` are what the party *advertises*: what everyone dials,
and what its certificate must name. ``listen_address`` and ``peer_listen_address`` are
what it *binds* (all interfaces, a NAT's inside address, a pod's IP), when that differs.
A party whose address has port 0 binds an ephemeral port (local clusters and
tests); its real address is read again from this file when it is dialled.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpcagg.protocol.errors import ConfigError

MiB = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """TLS on both ports: ``ca`` verifies every server, party and client certificate."""

    ca: Path


class Limits(_Strict):
    """``[limits]``: the bounds every server enforces (and clients size their messages by).

    Each field is range-checked on construction; ``chunk_bytes`` must be a multiple of 8
    (whole ring elements) and leave at least 1024 bytes of ``max_message_bytes`` for the
    message's other fields, else :class:`pydantic.ValidationError` (:class:`ConfigError`
    when loaded from a file).
    """

    min_cohort: int = Field(default=2, ge=1)  # floor on every round's min_clients
    max_vector_length: int = Field(default=100_000_000, ge=1)
    max_clients_per_round: int = Field(default=100_000, ge=1)
    max_concurrent_streams: int = Field(default=64, ge=1)
    max_aggregate_streams: int = Field(default=8, ge=1)  # GetAggregateShare streams at once
    max_upload_bytes_per_round: int = Field(default=64 << 30, ge=1)
    chunk_bytes: int = Field(default=2 * MiB, ge=8, le=4 * MiB)
    max_message_bytes: int = Field(default=5 * MiB, ge=1024)
    rpc_timeout_s: float = Field(default=120.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # A client connection with no call in progress for this long is closed by the server
    # (the client dials again on its next call): gRPC keeps buffers per connection after a
    # large stream, so 1000 trainers keeping theirs open between uploads held hundreds of
    # MB at each party. 0 (the default) keeps idle connections open; a few seconds bounds
    # a party's memory by the uploads in progress, at one reconnect per trainer per round.
    idle_connection_s: float = Field(default=0.0, ge=0)
    # A round in reveal mode "servers": how long after its commit (or its deadline, if
    # later) a party waits for the parties' group to open the aggregate before it gives up.
    reveal_timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _chunk_fits(self) -> Limits:
        if self.chunk_bytes % 8:
            raise ValueError(f"chunk_bytes must be a multiple of 8, got {self.chunk_bytes}")
        if self.chunk_bytes + 1024 > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must exceed chunk_bytes "
                f"({self.chunk_bytes}) by at least 1024"
            )
        return self


def _check_host_port(v: str | None) -> str | None:
    if v is None:
        return v
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"address must be host:port, got {v!r}")
    return v


class MetricsConfig(_Strict):
    """``[metrics]``: where a server serves Prometheus metrics (``/metrics``, plain HTTP)."""

    address: str

    _host_port = field_validator("address")(_check_host_port)


class Retention(_Strict):
    """``[retention]``: what each server's periodic clean-up removes (see servers/retention).

    A finished (COMMITTED or FAILED) round is pruned (its rows, spool and aggregate file)
    once it is not among the newest ``keep_rounds`` finished rounds, or finished more than
    ``keep_days`` ago; 0 disables either limit. An OPEN round without a deadline fails
    (nothing is revealed) once older than ``open_max_age_days`` (0: never).
    """

    keep_rounds: int = Field(default=0, ge=0)
    keep_days: float = Field(default=30.0, ge=0)
    open_max_age_days: float = Field(default=7.0, ge=0)
    interval_s: float = Field(default=600.0, gt=0)


class PartyConfig(_Strict):
    """One ``[[parties]]`` entry: a party's id (0..63), its advertised and bound addresses
    (each ``host:port``, port 0..65535, else a validation error), and, on the server side
    only, its data directory and TLS key pair."""

    id: int = Field(ge=0, lt=64)
    address: str
    """Advertised: trainers and the collector dial it; the party certificate names its host."""
    peer_address: str | None = None  # required by servers; client-only files may omit it
    listen_address: str | None = None
    """What the server binds for its client port (default: ``address``)."""
    peer_listen_address: str | None = None
    """What the server binds for its peer port (default: ``peer_address``)."""
    data_dir: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    _host_port = field_validator(
        "address", "peer_address", "listen_address", "peer_listen_address"
    )(_check_host_port)

    @property
    def client_bind(self) -> str:
        """The address the server listens on for trainers and the collector."""
        return self.listen_address or self.address

    @property
    def peer_bind(self) -> str | None:
        """The address the server listens on for the other parties."""
        return self.peer_listen_address or self.peer_address

    @property
    def port(self) -> int:
        """The port of the advertised ``address`` (0: an ephemeral port, not yet bound)."""
        return int(self.address.rpartition(":")[2])

    @property
    def host(self) -> str:
        """The host of the advertised ``address``, as written (an IPv6 host keeps its
        brackets): what the party certificate must name."""
        return self.address.rpartition(":")[0]


class ClusterConfig(_Strict):
    """The whole cluster file, validated: unknown keys are refused and the party ids must be
    0..n-1, each once, with n >= 2 (else a validation error; :func:`load_cluster` and
    :func:`parse_cluster` raise :class:`ConfigError` naming the key). ``source`` is the
    file it was loaded from (not serialized): :meth:`address_of` reads it again."""

    name: str = "mpcagg"
    engine: Literal["numpy", "crypten"] = "numpy"
    tls: TlsConfig | None = None
    limits: Limits = Limits()
    metrics: MetricsConfig | None = None
    retention: Retention = Retention()
    parties: list[PartyConfig]
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _parties(self) -> ClusterConfig:
        ids = [p.id for p in self.parties]
        if len(ids) < 2:
            raise ValueError(
                f"a cluster needs at least 2 parties (3 or more in production), got {len(ids)}"
            )
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(f"party ids must be 0..{len(ids) - 1}, each once; got {ids}")
        return self

    @property
    def n_parties(self) -> int:
        """How many parties hold shares (n of the n-out-of-n additive sharing)."""
        return len(self.parties)

    def party(self, index: int) -> PartyConfig:
        """The entry of party ``index``; raises :class:`ConfigError` if there is none."""
        for p in self.parties:
            if p.id == index:
                return p
        raise ConfigError(f"party {index} is not in the cluster (parties 0..{self.n_parties - 1})")

    def address_of(self, index: int, *, peer: bool = False) -> str:
        """Party ``index``'s client (or ``peer``) address, as dialled.

        A port of 0 means the party binds an ephemeral port (local clusters and tests)
        and writes its real address into the cluster file once it listens, so the file
        is read again; the result still ends in ``:0`` until then.
        """
        chosen = self.party(index)
        address = (chosen.peer_address if peer else chosen.address) or ""
        if address.endswith(":0") and self.source is not None:
            again = load_cluster(self.source).party(index)
            address = (again.peer_address if peer else again.address) or ""
        return address

    def ordered_parties(self) -> list[PartyConfig]:
        """The parties by id, 0 first (the file may list them in any order)."""
        return sorted(self.parties, key=lambda p: p.id)


def _resolve(base: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """Make relative paths in the raw TOML relative to the file's directory."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    out = dict(raw)
    tls = out.get("tls")
    if isinstance(tls, dict):
        out["tls"] = {k: fix(v) for k, v in tls.items()}
    parties = out.get("parties")
    if isinstance(parties, list):
        out["parties"] = [
            {k: (fix(v) if k in ("data_dir", "cert", "key") else v) for k, v in p.items()}
            if isinstance(p, dict)
            else p
            for p in parties
        ]
    return out


def parse_cluster(text: str, base: Path, source: Path | None = None) -> ClusterConfig:
    """Parse and validate cluster TOML text. Raises :class:`ConfigError` naming the bad key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cluster file {source or '<text>'} is not valid TOML: {exc}") from exc
    try:
        return ClusterConfig.model_validate({**_resolve(base, raw), "source": source})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else _msg(e["msg"]))
            for e in exc.errors()
        )
        raise ConfigError(f"cluster file {source or '<text>'} is invalid: {problems}") from None


def load_cluster(path: Path | str) -> ClusterConfig:
    """Load and validate a cluster file. Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster file {p}: {exc.strerror}") from exc
    return parse_cluster(text, p.resolve().parent, source=p.resolve())


def dump_cluster(config: ClusterConfig) -> str:
    """The cluster as TOML text (absolute paths), for writing a file clients can load."""
    lines = [f"name = {_q(config.name)}", f"engine = {_q(config.engine)}", ""]
    if config.tls is not None:
        lines += ["[tls]", f"ca = {_q(str(config.tls.ca))}", ""]
    lines.append("[limits]")
    for key, value in config.limits.model_dump().items():
        lines.append(f"{key} = {value!r}")
    lines.append("")
    if config.metrics is not None:
        lines += ["[metrics]", f"address = {_q(config.metrics.address)}", ""]
    lines.append("[retention]")
    for key, value in config.retention.model_dump().items():
        lines.append(f"{key} = {value!r}")
    lines.append("")
    for p in config.ordered_parties():
        lines += ["[[parties]]", f"id = {p.id}", f"address = {_q(p.address)}"]
        for key in ("peer_address", "listen_address", "peer_listen_address"):
            value = getattr(p, key)
            if value is not None:
                lines.append(f"{key} = {_q(value)}")
        for key in ("data_dir", "cert", "key"):
            value = getattr(p, key)
            if value is not None:
                lines.append(f"{key} = {_q(str(value))}")
        lines.append("")
    return "\n".join(lines)


def _msg(text: str) -> str:
    return text.removeprefix("Value error, ")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
