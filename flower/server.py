"""A Flower ServerApp strategy whose training aggregate comes from mpcagg.

:class:`SecureFedAvg` is Flower's message-based ``FedAvg`` with the training
aggregation replaced: ``configure_train`` samples the nodes as FedAvg does, opens a
weighted mpcagg round for them (its id derived from the run and round, so trainers can
check it) and sends the train instructions; ``aggregate_train`` receives only receipts,
closes the round, fetches the weighted mean update ``Σn·Δ / Σn`` and adds it to the
global model, and reports who dropped out. Evaluation stays FedAvg's.

::

    from flwr.serverapp import Grid, ServerApp
    from mpcagg import Collector
    from mpcagg.flower import SecureFedAvg

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        with Collector("cluster.toml", cert=..., key=...) as collector:
            strategy = SecureFedAvg(collector, bound=10.0, max_weight=10_000)
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from mpcagg import Collector, RoundState, TensorLayout
from mpcagg.flower.client import floating
from mpcagg.flower.rounds import RECEIPT_KEY, ROUND_ID_KEY, round_id_for
from mpcagg.protocol.spec import Holding, RoundSpec, cohort_digest

log = logging.getLogger("mpcagg.flower")


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What the strategy learned of one Flower round (no update, no single weight)."""

    server_round: int
    round_id: str
    sampled: tuple[int, ...]
    """Node ids sent a train instruction."""
    replied: tuple[int, ...] = ()
    """Nodes whose reply carried a receipt."""
    complete: tuple[int, ...] = ()
    """Nodes whose receipt says every party acknowledged their sharing."""
    failed: dict[int, str] = field(default_factory=dict)
    """Nodes that replied with an error (the reason Flower reports)."""
    cohort_size: int = 0
    total_weight: float = 0.0
    state: str = ""
    """COMMITTED, or FAILED with ``reason``."""
    reason: str = ""
    receipts_match_cohort: bool = False
    """Whether the committed cohort is exactly the replied nodes whose receipts were
    complete (its digest over their client and sharing ids)."""

    @property
    def dropouts(self) -> tuple[int, ...]:
        """Sampled nodes left out of the cohort: no reply, an error reply, or an
        incomplete upload (every sampled node if the round did not commit). If the
        cohort does not match the receipts, only the nodes without a receipt."""
        if self.state != "COMMITTED":
            return self.sampled
        counted = self.complete if self.receipts_match_cohort else self.replied
        return tuple(n for n in self.sampled if n not in counted)


@dataclass
class _OpenRound:
    server_round: int
    spec: RoundSpec
    arrays: ArrayRecord
    sampled: tuple[int, ...]


class SecureFedAvg(FedAvg):
    """FedAvg whose training aggregate is revealed by mpcagg, weighted by num-examples.

    ``collector`` is an open :class:`mpcagg.Collector`; ``bound`` the largest
    magnitude of one coordinate of one update (``|trained − global|``; trainers refuse
    larger ones: clip them in the ClientApp), ``max_weight`` the largest num-examples
    of one trainer; ``min_cohort`` the fewest trainers whose sum may be revealed (the
    servers enforce it and their own floor); ``close_wait_s`` how long to wait for the
    round to commit. Other keyword arguments are FedAvg's. ``reports`` holds one
    :class:`RoundReport` per training round.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        bound: float,
        max_weight: float,
        precision_bits: int = 16,
        min_cohort: int = 2,
        close_wait_s: float = 60.0,
        **fedavg: Any,
    ) -> None:
        super().__init__(**fedavg)
        self.collector = collector
        self.bound = bound
        self.max_weight = max_weight
        self.precision_bits = precision_bits
        self.min_cohort = min_cohort
        self.close_wait_s = close_wait_s
        self.reports: list[RoundReport] = []
        self._open: _OpenRound | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling and train messages, after opening the mpcagg round."""
        round_id = round_id_for(grid.run.run_id, server_round)
        config[ROUND_ID_KEY] = round_id
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not messages:
            return []
        layout = TensorLayout.from_shapes((n, a.shape) for n, a in floating(arrays).items())
        spec = self.collector.open_round(
            round_id,
            layout,
            min_clients=self.min_cohort,
            max_clients=max(len(messages), self.min_cohort),
            bound=self.bound,
            precision_bits=self.precision_bits,
            weighted=True,
            max_weight=self.max_weight,
        )
        sampled = tuple(m.metadata.dst_node_id for m in messages)
        self._open = _OpenRound(server_round, spec, arrays, sampled)
        log.info(
            "round %d: opened mpcagg round %s for %d nodes", server_round, round_id, len(sampled)
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Close the mpcagg round and return ``global + Σn·Δ / Σn`` (None if it failed)."""
        opened, self._open = self._open, None
        if opened is None or opened.server_round != server_round:
            log.warning("round %d: no mpcagg round was opened; nothing to aggregate", server_round)
            return None, None
        spec = opened.spec
        replied, failed, complete = _read_replies(spec.round_id, replies)
        info = self.collector.close(spec.round_id, wait_s=self.close_wait_s)
        report = RoundReport(
            server_round,
            spec.round_id,
            opened.sampled,
            replied=tuple(replied),
            complete=tuple(complete),
            failed=failed,
            state=info.state.name,
            reason=info.reason,
        )
        if info.state is not RoundState.COMMITTED:
            self._report(report)
            return None, None
        result = self.collector.result(spec.round_id, spec)
        total = float(result.total_weight or 0.0)
        report = replace(
            report,
            cohort_size=result.cohort_size,
            total_weight=total,
            receipts_match_cohort=cohort_digest(complete.values()) == result.cohort_digest,
        )
        self._report(report)
        metrics = MetricRecord(
            {
                "mpcagg-cohort-size": result.cohort_size,
                "mpcagg-total-weight": total,
                "mpcagg-dropouts": len(report.dropouts),
            }
        )
        if total == 0.0:
            log.warning("round %d: the cohort's total weight is 0; the model is kept", server_round)
            return None, metrics
        return apply_update(opened.arrays, result.mean), metrics

    def _report(self, report: RoundReport) -> None:
        self.reports.append(report)
        if report.state != "COMMITTED":
            log.warning(
                "round %d: mpcagg round %s %s (%s); %d of %d nodes replied, the model is kept",
                report.server_round,
                report.round_id,
                report.state,
                report.reason,
                len(report.replied),
                len(report.sampled),
            )
            return
        log.info(
            "round %d: cohort %d of %d sampled, total weight %g; dropouts %s%s",
            report.server_round,
            report.cohort_size,
            len(report.sampled),
            report.total_weight,
            list(report.dropouts) or "none",
            "" if report.receipts_match_cohort else " (the cohort differs from the receipts)",
        )


def apply_update(arrays: ArrayRecord, mean: Any) -> ArrayRecord:
    """``arrays`` plus the mean update, each array in its own dtype; arrays that the
    update does not name (integer buffers) are kept as they are."""
    out = ArrayRecord()
    for name, array in arrays.items():
        value = array.numpy()
        if name in mean:
            value = (value.astype(np.float64) + mean[name]).astype(value.dtype)
        out[name] = Array(np.asarray(value))
    return out


def _read_replies(
    round_id: str, replies: Iterable[Message]
) -> tuple[list[int], dict[int, str], dict[int, Holding]]:
    """Replying nodes, error replies by node, and the holding of each complete receipt."""
    replied: list[int] = []
    failed: dict[int, str] = {}
    complete: dict[int, Holding] = {}
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            failed[node] = msg.error.reason or f"error code {msg.error.code}"
            continue
        receipt = msg.content.config_records.get(RECEIPT_KEY)
        if receipt is None or receipt.get("round-id") != round_id:
            failed[node] = f"the reply carries no receipt for round {round_id!r}"
            continue
        replied.append(node)
        if receipt.get("complete"):
            sharing = bytes.fromhex(str(receipt["sharing-id"]))
            complete[node] = Holding(str(receipt["client-id"]), sharing)
    return replied, failed, complete
