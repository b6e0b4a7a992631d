"""The ServerApp: any strategy for N rounds from the seeded model, evaluating the global
model on the held-out set after every round.

``app`` (the deployment entry point) runs :class:`mpcagg.flower.SecureFedAvg` with the
collector credentials and limits from the run config and writes what it saw to the
run config's ``out`` (JSON); :func:`make` builds one around any strategy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from digits import task
from mpcagg import Collector
from mpcagg.flower import SecureFedAvg

TRAINERS = 5
FEDAVG = {"fraction_evaluate": 0.0, "min_train_nodes": TRAINERS, "min_available_nodes": TRAINERS}


@dataclass
class History:
    """What the ServerApp saw after each round: time, test accuracy, the global model."""

    times: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    models: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def seconds_per_round(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def run(grid: Grid, strategy: Strategy, rounds: int, history: History) -> None:
    _, test = task.data()
    net = task.model()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        history.times.append(time.perf_counter())
        net.load_state_dict(arrays.to_torch_state_dict())
        history.accuracy.append(task.accuracy(net, test))
        history.models.append({k: v.numpy().copy() for k, v in arrays.items()})
        return MetricRecord({"accuracy": history.accuracy[-1]})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.model().state_dict()),
        num_rounds=rounds,
        evaluate_fn=evaluate,
    )


def make(strategy: Callable[[], Strategy], rounds: int, history: History) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run(grid, strategy(), rounds, history)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    history = History()
    rounds = int(cfg["num-server-rounds"])
    cohorts: list[int] = []
    if cfg["secure"]:
        cert, key = str(cfg["collector-cert"]) or None, str(cfg["collector-key"]) or None
        with Collector(Path(str(cfg["mpcagg-cluster"])), cert=cert, key=key) as collector:
            strategy = SecureFedAvg(
                collector,
                bound=float(cfg["bound"]),
                max_weight=float(cfg["max-weight"]),
                **FEDAVG,
            )
            run(grid, strategy, rounds, history)
        cohorts = [r.cohort_size for r in strategy.reports]
    else:
        run(grid, FedAvg(**FEDAVG), rounds, history)
    out = str(cfg["out"])
    if out:
        summary = {
            "accuracy": history.accuracy,
            "seconds": history.seconds_per_round,
            "cohorts": cohorts,
        }
        Path(out).write_text(json.dumps(summary))
