"""``mpcagg result``: what one party revealed, read from its own data directory.

In reveal mode ``servers`` a party serves the sum it revealed only to cohort trainers
(when the spec allows it); its operator reads it here, on the party's machine, from
``<data_dir>/reveal/`` (the server may keep running: the files are written whole). The
sum is decoded as the collector decodes one (:func:`mpcagg.clients.collector.decode_result`,
including the check that honest inputs could produce it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from mpcagg.protocol.cluster import load_cluster
from mpcagg.protocol.errors import ConfigError, MpcaggError, NotFound
from mpcagg.protocol.group import RevealState

if TYPE_CHECKING:  # imported when used: the CLI starts without the server's modules
    from mpcagg.clients.results import AggregateResult
    from mpcagg.servers.results import RevealRecord


@dataclass(frozen=True)
class PartyResult:
    """One party's reveal of one round: its record, and the decoded sum if revealed."""

    party: int
    record: RevealRecord
    result: AggregateResult | None


def read_result(data_dir: Path, party: int, round_id: str) -> PartyResult:
    """The reveal of ``round_id`` in ``data_dir``. Raises :class:`NotFound` if this party
    has no reveal record for it (not committed here, or not in reveal mode servers),
    :class:`ProtocolError` if the stored sum is not one honest inputs can produce."""
    from mpcagg.clients.collector import decode_result
    from mpcagg.servers.results import ResultStore

    store = ResultStore.open(data_dir)
    record = store.read(round_id)
    if record is None:
        raise NotFound(
            f"party {party} has no reveal of round {round_id!r} in {data_dir} (not committed "
            "there, or not a round in reveal mode servers)"
        )
    if record.state is not RevealState.REVEALED:
        return PartyResult(party, record, None)
    total = store.revealed_sum(record)
    result = decode_result(record.round_spec, total, record.cohort_size, record.cohort_digest)
    return PartyResult(party, record, result)


def result(
    round_id: Annotated[str, typer.Argument(help="The round.")],
    config: Annotated[Path, typer.Option(help="Cluster file (TOML) naming this party's data_dir.")],
    party: Annotated[int, typer.Option(help="This party's index.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the sum and mean per tensor here (.npz).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, no arrays.")] = False,
) -> None:
    """Show what this party revealed for a round in reveal mode servers (its data dir)."""
    try:
        me = load_cluster(config).party(party)
        if me.data_dir is None:
            raise ConfigError(f"party {party} has no data_dir in {config}")
        found = read_result(me.data_dir, party, round_id)
    except (MpcaggError, OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    rec, res = found.record, found.result
    summary = {
        "round_id": rec.round_id,
        "party": party,
        "state": rec.state.value,
        "reason": rec.reason,
        "cohort_size": rec.cohort_size,
        "cohort_digest": rec.cohort_digest.hex(),
        "revealed_unix": rec.revealed_unix,
    }
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        typer.echo(
            f"round {rec.round_id} at party {party}: {rec.state.value}"
            + (f" ({rec.reason})" if rec.reason else "")
            + f", cohort {rec.cohort_size} ({rec.cohort_digest.hex()[:16]}…)"
        )
        if res is not None:
            for name, values in res.sum.items():
                mean = res.mean[name]
                typer.echo(
                    f"  {name} {list(np.shape(values))}: sum[0..] {np.ravel(values)[:4]}, "
                    f"mean[0..] {np.ravel(mean)[:4]}"
                )
    if out is not None and res is not None:
        arrays = {f"sum/{k}": np.asarray(v) for k, v in res.sum.items()}
        arrays |= {f"mean/{k}": np.asarray(v) for k, v in res.mean.items()}
        np.savez(out, **arrays)  # type: ignore[arg-type]
        typer.echo(f"wrote {out}")
    if rec.state is not RevealState.REVEALED:
        raise typer.Exit(code=1)
