"""``mpcagg rounds``: list, show, abort and prune rounds.

Against a running cluster (``--config`` with the collector's ``--cert`` and ``--key``:
every party's Admin service), or on one party's data directory (``--data-dir``, read
only: a stopped party, for inspection; ``prune`` there applies the retention policy
and needs the party stopped). ``show`` verifies every party's audit log: its hash
chain, and each signature against a certificate of the cluster CA naming that party.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from mpcagg.ops.rounds_view import render_list, render_show
from mpcagg.protocol.admin import Decision
from mpcagg.protocol.errors import ConfigError, MpcaggError, NotFound

rounds_app = typer.Typer(
    no_args_is_help=True,
    help="Operator commands: list, show, abort and prune rounds (a running cluster with the "
    "collector's certificate, or one party's --data-dir).",
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Cluster file (TOML): ask every running party.")
]
CertOpt = Annotated[Path | None, typer.Option(help="The collector's client certificate (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option(help="The collector's private key (PEM).")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Read one party's data directory instead (stopped party)."),
]
PartyOpt = Annotated[
    int | None, typer.Option(help="Only this party (with --data-dir: the directory's party).")
]


# --- where the answers come from ---------------------------------------------------------


@dataclass
class View:
    """What each party said (or why it could not answer)."""

    parties: list[int]
    answers: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


class Remote:
    """Every party's Admin service, with the collector's client certificate."""

    def __init__(self, config: Path, cert: Path | None, key: Path | None) -> None:
        from mpcagg.clients.admin import AdminClient

        self.client = AdminClient(config, cert=cert, key=key)
        self.cluster = self.client.cluster
        self.ca = self.cluster.tls.ca.read_bytes() if self.cluster.tls is not None else None

    def close(self) -> None:
        self.client.close()

    def each(self, op: Callable[[int], Any], parties: Sequence[int] | None = None) -> View:
        targets = list(parties) if parties is not None else list(range(self.cluster.n_parties))
        view = View(targets)
        for party, outcome in self.client.each_party(op, targets).items():
            if isinstance(outcome, MpcaggError):
                view.errors[party] = str(outcome)
            else:
                view.answers[party] = outcome
        return view

    def list(self, parties: Sequence[int] | None) -> View:
        return self.each(self.client.list_rounds, parties)

    def show(self, round_id: str, parties: Sequence[int] | None) -> View:
        return self.each(lambda p: self.client.show_round(p, round_id), parties)

    def audit(self, parties: Sequence[int]) -> View:
        return self.each(self.client.audit_log, parties)


class Local:
    """One party's data directory, read only."""

    def __init__(self, data_dir: Path, party: int | None, config: Path | None) -> None:
        from mpcagg.servers.audit import read_lines

        self.data_dir = data_dir
        if party is None:
            party = _party_of(read_lines(data_dir))
        self.party = party
        self.ca: bytes | None = None
        if config is not None:
            from mpcagg.protocol.cluster import load_cluster

            cluster = load_cluster(config)
            if cluster.tls is not None:
                self.ca = cluster.tls.ca.read_bytes()

    def close(self) -> None:
        pass

    def _inventory(self) -> Any:
        from mpcagg.servers.inventory import Inventory

        return Inventory(self.data_dir, self.party)

    def list(self, parties: Sequence[int] | None) -> View:
        with self._inventory() as inventory:
            return View([self.party], {self.party: inventory.rounds()})

    def show(self, round_id: str, parties: Sequence[int] | None) -> View:
        from mpcagg.servers.audit import read_lines

        with self._inventory() as inventory:
            try:
                summary = inventory.round(round_id)
            except NotFound as exc:
                return View([self.party], errors={self.party: str(exc)})
        record = next(
            (line for line in reversed(read_lines(self.data_dir)) if _round_of(line) == round_id),
            None,
        )
        return View([self.party], {self.party: (summary, record)})

    def audit(self, parties: Sequence[int]) -> View:
        from mpcagg.servers.audit import read_certificates, read_lines

        certs = list(read_certificates(self.data_dir).values())
        return View([self.party], {self.party: (read_lines(self.data_dir), certs)})


def _round_of(line: bytes) -> str | None:
    try:
        value = json.loads(line).get("round_id")
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


def _party_of(lines: Sequence[bytes]) -> int:
    for line in lines:
        try:
            return int(json.loads(line)["party"])
        except (ValueError, KeyError, TypeError):
            continue
    return -1


def _source(
    config: Path | None,
    cert: Path | None,
    key: Path | None,
    data_dir: Path | None,
    party: int | None,
) -> Remote | Local:
    if data_dir is not None:
        return Local(data_dir, party, config)
    if config is None:
        raise ConfigError("give --config (a running cluster) or --data-dir (one party's data)")
    return Remote(config, cert, key)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


# --- formatting ---------------------------------------------------------------------------


def _verify(audit: View, ca: bytes | None) -> dict[int, Any]:
    from mpcagg.servers.audit import fingerprint, verify

    checks = {}
    for party, (lines, certs) in audit.answers.items():
        by_fp = {}
        for pem in certs:
            try:
                by_fp[fingerprint(pem)] = pem
            except ValueError:
                continue
        checks[party] = verify(lines, by_fp, party=party, ca_pem=ca)
    return checks


# --- commands -----------------------------------------------------------------------------


@rounds_app.command("list")
def list_rounds(
    config: ConfigOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    data_dir: DataDirOpt = None,
    party: PartyOpt = None,
) -> None:
    """Every round with its state, uploads, cohort size and age."""
    try:
        source = _source(config, cert, key, data_dir, party)
        try:
            view = source.list([party] if party is not None and data_dir is None else None)
        finally:
            source.close()
    except MpcaggError as exc:
        raise _fail(exc) from None
    for line in render_list(view, time.time()):
        typer.echo(line)
    raise typer.Exit(code=1 if view.errors else 0)


@rounds_app.command("show")
def show_round(
    round_id: Annotated[str, typer.Argument(help="The round.")],
    config: ConfigOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    data_dir: DataDirOpt = None,
    party: PartyOpt = None,
) -> None:
    """One round: spec, cohort, per-party counts and times, its audit records, and the
    verification of every party's audit log (exit 1 if a chain or signature is broken)."""
    try:
        source = _source(config, cert, key, data_dir, party)
        try:
            parties = [party] if party is not None and data_dir is None else None
            view = source.show(round_id, parties)
            audit = source.audit([p for p in view.parties if p in view.answers])
        finally:
            source.close()
        checks = _verify(audit, source.ca)
    except MpcaggError as exc:
        raise _fail(exc) from None
    if not view.answers:
        raise _fail(NotFound(next(iter(view.errors.values()), f"unknown round {round_id!r}")))
    for line in render_show(round_id, view, audit, checks):
        typer.echo(line)
    broken = [p for p, c in checks.items() if not c.ok]
    raise typer.Exit(code=1 if broken else 0)


@rounds_app.command("abort")
def abort_round(
    round_id: Annotated[str, typer.Argument(help="The round.")],
    config: Annotated[Path, typer.Option("--config", help="Cluster file (TOML).")],
    cert: CertOpt = None,
    key: KeyOpt = None,
    reason: Annotated[str, typer.Option(help="Why (recorded in the round's state).")] = "",
) -> None:
    """Fail a round that cannot close, on every party: nothing is ever revealed for it.

    Sent to the leader (party 0), which fails it and tells every other party (retrying
    until each has recorded it). Refused for a COMMITTED round, and once the leader has
    decided the cohort (the commit then completes when every party is reachable).
    """
    try:
        remote = Remote(config, cert, key)
        try:
            status = remote.client.abort_round(round_id, reason)
            view = remote.each(lambda p: remote.client.get_round(p, round_id))
        finally:
            remote.close()
    except MpcaggError as exc:
        raise _fail(exc) from None
    typer.echo(f"round {round_id}: {status.state.value} at the leader ({status.reason})")
    for p in view.parties:
        if p in view.answers:
            typer.echo(f"  party {p}: {view.answers[p].state.value}")
        else:
            typer.echo(f"  party {p}: not told yet ({view.errors[p]}); the leader keeps trying")


@rounds_app.command("prune")
def prune_rounds(
    config: ConfigOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    data_dir: DataDirOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would be done; change nothing.")] = False,
) -> None:
    """Apply the retention policy ([retention] in the cluster file) now, on every party:
    fail OPEN rounds without a deadline past open_max_age_days, prune finished rounds
    beyond keep_rounds or keep_days. With --data-dir (and --config for the policy),
    on a stopped party's directory."""
    try:
        if data_dir is not None:
            decided = {-1: _prune_local(data_dir, config, dry_run)}
            errors: dict[int, str] = {}
        else:
            if config is None:
                raise ConfigError("give --config (a running cluster) or --data-dir")
            remote = Remote(config, cert, key)
            try:
                view = remote.each(lambda p: remote.client.prune(p, dry_run=dry_run))
            finally:
                remote.close()
            decided, errors = view.answers, view.errors
    except MpcaggError as exc:
        raise _fail(exc) from None
    verb = (
        {"fail": "would fail", "prune": "would prune"}
        if dry_run
        else {"fail": "failed", "prune": "pruned"}
    )
    for party, decisions in sorted(decided.items()):
        name = "this party" if party < 0 else f"party {party}"
        if not decisions:
            typer.echo(f"{name}: nothing to do")
        for d in decisions:
            typer.echo(f"{name}: {verb[d.action]} {d.round_id} ({d.why})")
    for party, error in sorted(errors.items()):
        typer.echo(f"party {party}: unreachable or refused: {error}")
    raise typer.Exit(code=1 if errors else 0)


def _prune_local(data_dir: Path, config: Path | None, dry_run: bool) -> list[Decision]:
    """Prune a stopped party's directory: takes the directory's lock (refused while a
    server runs on it); only finished rounds are pruned, nothing is failed offline."""
    from mpcagg.protocol.cluster import Retention, load_cluster
    from mpcagg.servers.inventory import Inventory
    from mpcagg.servers.retention import plan
    from mpcagg.servers.storage import Storage

    policy = load_cluster(config).retention if config is not None else Retention()
    storage = Storage(data_dir)  # refuses a directory a running server holds
    try:
        with Inventory(data_dir) as inventory:
            decisions = [
                d for d in plan(inventory.rounds(), policy, time.time()) if d.action == "prune"
            ]
        if not dry_run:
            for d in decisions:
                storage.delete_round(d.round_id)
        return decisions
    finally:
        storage.close()


__all__ = ["rounds_app"]
