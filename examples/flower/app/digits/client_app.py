"""The ClientApp: train locally on this node's partition; with the mpcagg mod, only a
receipt goes back to the SuperLink.

``app`` (the deployment entry point, ``[tool.flwr.app.components]``) reads the node's
mpcagg credentials from its node config (``mpcagg-cluster``, ``mpcagg-cert``,
``mpcagg-key``); :func:`make` builds one with any mods, for the simulation and the
plain run.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from digits import task
from mpcagg.flower import SecureAggregationMod


def make(mods: list[Mod], drop: set[tuple[int, int]] | None = None) -> ClientApp:
    """Trainers on partition ``context.node_config['partition-id']``; a ``(partition,
    round)`` in ``drop`` fails that round (a dropout)."""
    parts, _ = task.data()
    failing = drop or set()
    app = ClientApp()

    @app.train(mods=mods)
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        if (pid, server_round) in failing:
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


_secure = SecureAggregationMod()


def secure_unless_plain(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The mpcagg mod, unless the run config says ``secure = false`` (the plain baseline)."""
    if context.run_config.get("secure", True):
        return _secure(msg, context, call_next)
    return call_next(msg, context)


app = make([secure_unless_plain])
