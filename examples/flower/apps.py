"""The Flower apps of the example: one ClientApp (optionally with the mpcagg mod) and one
ServerApp (any strategy); the same training code for the secure and the plain run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

import task


@dataclass
class History:
    """What the ServerApp saw after each round: time, test accuracy, the global model."""

    times: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    models: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def seconds_per_round(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def client_app(parts: list[task.Split], mods: list[Mod], drop: set[tuple[int, int]]) -> ClientApp:
    """Trainers: partition ``context.node_config['partition-id']`` each; a ``(partition,
    round)`` in ``drop`` fails that round (a dropout)."""
    app = ClientApp()

    @app.train(mods=mods)
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        if (pid, server_round) in drop:
            raise RuntimeError(f"partition {pid} drops out of round {server_round}")
        net = task.model()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = task.train(net, parts[pid], seed=task.SEED + 100 * server_round + pid)
        metrics = {"train_loss": loss, "num-examples": len(parts[pid].y)}
        content = RecordDict(
            {"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    return app


def server_app(
    strategy: Callable[[], Strategy], rounds: int, test: task.Split, history: History
) -> ServerApp:
    """Runs ``strategy`` for ``rounds`` rounds from the seeded initial model, evaluating
    the global model on ``test`` after every round (and before the first)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        net = task.model()

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            history.times.append(time.perf_counter())
            net.load_state_dict(arrays.to_torch_state_dict())
            history.accuracy.append(task.accuracy(net, test))
            history.models.append({k: v.numpy().copy() for k, v in arrays.items()})
            return MetricRecord({"accuracy": history.accuracy[-1]})

        strategy().start(
            grid=grid,
            initial_arrays=ArrayRecord(net.state_dict()),
            num_rounds=rounds,
            evaluate_fn=evaluate,
        )

    return app
