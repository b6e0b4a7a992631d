"""What the ClientApp mod and the ServerApp strategy agree on: one mpcagg round per
Flower round, its id derived from the Flower run and round, and the record keys."""

from __future__ import annotations

ROUND_ID_KEY = "mpcagg-round-id"
"""Config key (in the train message's ConfigRecord) naming the mpcagg round to share into."""
RECEIPT_KEY = "mpcagg-receipt"
"""Record key (ConfigRecord) of the receipt a trainer returns instead of its update."""
SERVER_ROUND_KEY = "server-round"
"""Config key Flower's strategies set to the current round (``FedAvg.configure_train``)."""


def round_id_for(run_id: int, server_round: int) -> str:
    """The mpcagg round id of Flower round ``server_round`` of run ``run_id``.

    Both sides derive it; a trainer refuses a train message whose config names another
    round, so the ServerApp cannot steer one Flower round's update into two rounds.
    Raises :class:`ValueError` for a negative run id or a round below 1.
    """
    if isinstance(run_id, bool) or not isinstance(run_id, int) or run_id < 0:
        raise ValueError(f"run id must be an int >= 0, got {run_id!r}")
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
        raise ValueError(f"server round must be an int >= 1, got {server_round!r}")
    return f"flwr-{run_id}-round-{server_round}"
