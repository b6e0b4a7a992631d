"""The ``mpcagg`` command line."""

from __future__ import annotations

import enum
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import click
import typer

from mpcagg.ops.reveal import result as reveal_result
from mpcagg.ops.rounds import rounds_app
from mpcagg.protocol.errors import MpcaggError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mpcagg: secure aggregation of model updates across three or more servers.",
)
certs_app = typer.Typer(
    no_args_is_help=True, help="Credentials: a CA, party certificates, client certificates."
)
app.add_typer(certs_app, name="certs")
app.add_typer(rounds_app, name="rounds")
app.command("result")(reveal_result)


class Engine(enum.StrEnum):
    numpy = "numpy"
    crypten = "crypten"


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(enum.StrEnum):
    auto = "auto"
    text = "text"
    json = "json"


def _version(show: bool) -> None:
    if show:
        from mpcagg.protocol.version import PROTOCOL_VERSION, package_version
        from mpcagg.servers.schema import SCHEMA_VERSION

        typer.echo(
            f"mpcagg {package_version()} (peer protocol {PROTOCOL_VERSION}, "
            f"store schema {SCHEMA_VERSION})"
        )
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """mpcagg: secure aggregation of model updates across three or more servers."""


def _logging(level: str, fmt: str = "text") -> None:
    from mpcagg.servers.logs import configure

    configure(level, fmt)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.command()
def server(
    config: Annotated[Path, typer.Option(help="Cluster file (TOML).")],
    party: Annotated[int, typer.Option(help="This server's party index.")],
    insecure: Annotated[
        bool, typer.Option(help="Run without TLS or authentication (dev only).")
    ] = False,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound ports here.")] = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat, typer.Option(help="auto: text on a terminal, JSON lines otherwise.")
    ] = LogFormat.auto,
    engine: Annotated[
        Engine | None, typer.Option(help="Override the cluster file's engine.")
    ] = None,
    metrics_address: Annotated[
        str | None,
        typer.Option(help="Serve Prometheus metrics on HOST:PORT (else [metrics] address)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
) -> None:
    """Run one aggregation server, as in production."""
    _logging(log_level.value, log_format.value)
    from mpcagg.servers.operations import banner

    log = logging.getLogger("mpcagg.server")
    # The first line, whatever --log-level says: which mpcagg runs, in which versions.
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, banner(party), (), None))
    try:
        from mpcagg.protocol.cluster import load_cluster
        from mpcagg.servers.server import serve_forever

        cluster = load_cluster(config)
        if engine is not None:
            cluster = cluster.model_copy(update={"engine": engine.value})
        if metrics_address is not None:
            metrics_address = _metrics_address(metrics_address)
        serve_forever(
            cluster,
            party,
            insecure=insecure,
            port_file=port_file,
            metrics_port=metrics_port,
            metrics_address=metrics_address,
        )
    except (MpcaggError, OSError) as exc:
        raise _fail(exc) from None
    except Exception as exc:  # one line, never a traceback (it goes to the DEBUG log)
        log.debug("start-up failed", exc_info=exc)
        raise _fail(
            RuntimeError(f"{type(exc).__name__}: {exc} (--log-level DEBUG shows where)")
        ) from None


def _metrics_address(address: str) -> str:
    from pydantic import ValidationError

    from mpcagg.protocol.cluster import MetricsConfig
    from mpcagg.protocol.errors import ConfigError

    try:
        return MetricsConfig(address=address).address
    except ValidationError:
        raise ConfigError(f"--metrics-address must be host:port, got {address!r}") from None


@app.command()
def health(
    config: Annotated[Path, typer.Option(help="Cluster file (TOML).")],
    party: Annotated[int, typer.Option(help="The party to probe (its cert and key are used).")],
    timeout: Annotated[float, typer.Option(help="Seconds per port.")] = 5.0,
    wait: Annotated[
        float, typer.Option(help="Keep probing up to this many seconds until it serves.")
    ] = 0.0,
) -> None:
    """Exit 0 if the party answers SERVING on both ports, 1 if not (for container probes).

    Prints each port's answer and the mpcagg version and peer protocol the party runs.
    """
    from mpcagg.ops.health import wait_healthy
    from mpcagg.protocol.cluster import load_cluster

    try:
        ports = wait_healthy(load_cluster(config), party, wait=wait, timeout=timeout)
    except MpcaggError as exc:
        raise _fail(exc) from None
    serving = all(p.serving for p in ports)
    typer.echo(f"party {party}: {'serving' if serving else 'NOT serving'}")
    for p in ports:
        typer.echo(f"  {p.describe()}")
    raise typer.Exit(code=0 if serving else 1)


@app.command()
def up(
    parties: Annotated[int, typer.Option(help="Number of servers.")] = 3,
    directory: Annotated[Path, typer.Option("--dir", help="Data, certificates, logs.")] = Path(
        ".mpcagg/cluster"
    ),
    engine: Annotated[str, typer.Option(help="numpy or crypten.")] = "numpy",
    insecure: Annotated[bool, typer.Option(help="No TLS (dev only).")] = False,
) -> None:
    """Start a local cluster on 127.0.0.1 and keep it in the foreground (Ctrl-C stops it)."""
    _logging("WARNING")
    from mpcagg.ops.local import LocalCluster

    cluster = LocalCluster(directory, parties, tls=not insecure, engine=engine)
    try:
        cluster.start()
    except MpcaggError as exc:
        cluster.stop()
        raise _fail(exc) from None
    cfg = cluster.config
    typer.echo(f"{parties} servers up ({'TLS' if not insecure else 'NO TLS'}, engine {engine}).")
    for p in cfg.ordered_parties():
        typer.echo(
            f"  party {p.id}: {p.address} (peers: {p.peer_address}), "
            f"log {directory}/party-{p.id}.log"
        )
    typer.echo(f"cluster file: {cluster.cluster_file}")
    if not insecure:
        typer.echo(
            f"client certificates: mpcagg certs client --dir {directory}/certs --client-id ID "
            "--role trainer|collector --out-dir DIR"
        )
    typer.echo("Ctrl-C to stop.")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        dead = [i for i in range(parties) if not cluster.alive(i)]
        if dead:
            typer.secho(
                f"party {dead[0]} exited; stopping the cluster", fg=typer.colors.RED, err=True
            )
            break
    codes = cluster.stop()
    typer.echo(f"stopped (exit codes {codes}).")


@app.command()
def demo(
    parties: Annotated[int, typer.Option(help="Number of servers.")] = 3,
    trainers: Annotated[int, typer.Option(help="Simulated trainers.")] = 8,
    rounds: Annotated[int, typer.Option(help="Federated averaging rounds.")] = 5,
    engine: Annotated[str, typer.Option(help="numpy or crypten.")] = "numpy",
    directory: Annotated[Path | None, typer.Option("--dir", help="Keep state here.")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS (dev only).")] = False,
) -> None:
    """A local cluster plus simulated trainers running secure federated averaging."""
    _logging("WARNING")
    from mpcagg.ops.demo import run_demo

    try:
        ok = run_demo(
            parties=parties,
            trainers=trainers,
            rounds=rounds,
            engine=engine,
            directory=directory,
            tls=not insecure,
        )
    except MpcaggError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code=0 if ok else 1)


@certs_app.command("dev")
def certs_dev(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")],
    parties: Annotated[int, typer.Option(help="Number of parties.")] = 3,
    host: Annotated[
        list[str] | None, typer.Option(help="Host name or IP for party certificates (repeat).")
    ] = None,
    trainer: Annotated[
        list[str] | None, typer.Option(help="Trainer id to issue a client certificate for.")
    ] = None,
) -> None:
    """Create (or reuse) a development CA, party certificates and client certificates."""
    from mpcagg.ops.credentials import provision_dev

    try:
        creds = provision_dev(
            directory,
            parties,
            hosts=tuple(host or ("127.0.0.1", "localhost")),
            trainer_ids=tuple(trainer or ()),
        )
    except (ValueError, OSError, MpcaggError) as exc:
        raise _fail(exc) from None
    typer.echo(f"CA: {creds.ca_cert} (key {creds.ca_key}, mode 0600)")
    for i, files in enumerate(creds.parties):
        typer.echo(f"party {i}: {files.cert} (key {files.key}, mode 0600)")
    typer.echo(f"collector: {creds.collector.cert} (key {creds.collector.key}, mode 0600)")
    for trainer_id, files in zip(creds.trainer_ids, creds.trainers, strict=True):
        typer.echo(f"trainer {trainer_id}: {files.cert} (key {files.key}, mode 0600)")


@certs_app.command("party")
def certs_party(
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory holding ca.pem and ca-key.pem.")
    ],
    party: Annotated[int, typer.Option(help="Party index.")],
    host: Annotated[list[str], typer.Option(help="Host name or IP (repeat).")],
) -> None:
    """Issue a server certificate for one party (e.g. another organisation's host)."""
    from mpcagg.ops.pki import issue_party_cert, load_key_pair, write_key_pair

    try:
        ca = load_key_pair(directory / "ca.pem", directory / "ca-key.pem")
        pair = issue_party_cert(ca, party, host)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    write_key_pair(pair, directory / f"party-{party}.pem", directory / f"party-{party}-key.pem")
    typer.echo(f"wrote {directory}/party-{party}.pem and party-{party}-key.pem (0600)")


@certs_app.command("client")
def certs_client(
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory holding ca.pem and ca-key.pem.")
    ],
    client_id: Annotated[str, typer.Option(help="Trainer or collector id.")],
    out_dir: Annotated[Path, typer.Option(help="Write <id>.pem and <id>-key.pem (0600) here.")],
    role: Annotated[str, typer.Option(help="trainer or collector.")] = "trainer",
    days: Annotated[int, typer.Option(help="Validity in days (keep it short).")] = 30,
) -> None:
    """Issue a client certificate (mutual TLS) for a trainer or the collector."""
    from mpcagg.ops.pki import issue_client_cert, load_key_pair, write_key_pair
    from mpcagg.protocol.identity import check_role

    try:
        ca = load_key_pair(directory / "ca.pem", directory / "ca-key.pem")
        pair = issue_client_cert(ca, client_id, check_role(role), valid_days=days)
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, key = out_dir / f"{client_id}.pem", out_dir / f"{client_id}-key.pem"
        write_key_pair(pair, cert, key)
    except (ValueError, OSError, MpcaggError) as exc:
        raise _fail(exc) from None
    expires = pair.certificate.not_valid_after_utc.isoformat(timespec="seconds")
    typer.echo(f"wrote {cert} and {key} (0600) for {role} {client_id!r}, valid until {expires}")


def main(argv: list[str] | None = None) -> int:
    """The console script: every error is one line on stderr (exit 2), never a traceback."""
    try:
        result = app(args=argv, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.format_message())
        return 0
    except click.ClickException as exc:
        typer.secho(f"error: {exc.format_message()}", fg=typer.colors.RED, err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        typer.secho("aborted", err=True)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
