"""mpcagg for Flower (Message API, flwr >= 1.42): secure aggregation of the training step.

Public surface::

    SecureAggregationMod(credentials=from_node_config, ...)   ClientApp mod (trainer side)
    NodeCredentials, from_node_config                          a SuperNode's mpcagg files
    SecureFedAvg(collector, *, bound, max_weight, ...)         ServerApp strategy (collector)
    RoundReport                                                what one round told the server
    round_id_for(run_id, server_round)                         the mpcagg round of a Flower round
    clip_linf, clip_l2                                         bound an update before sharing

This package imports :mod:`mpcagg` and :mod:`mpcagg.clients`, never the servers.
"""

from mpcagg.clients.clipping import clip_l2, clip_linf
from mpcagg.flower.client import NodeCredentials, SecureAggregationMod, from_node_config
from mpcagg.flower.rounds import RECEIPT_KEY, ROUND_ID_KEY, round_id_for
from mpcagg.flower.server import RoundReport, SecureFedAvg

__all__ = [
    "RECEIPT_KEY",
    "ROUND_ID_KEY",
    "NodeCredentials",
    "RoundReport",
    "SecureAggregationMod",
    "SecureFedAvg",
    "clip_l2",
    "clip_linf",
    "from_node_config",
    "round_id_for",
]
