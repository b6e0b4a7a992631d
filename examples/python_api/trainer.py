"""A trainer's process: join the round by its id and submit an update.

Run as ``python trainer.py <client-id>`` in a directory holding ``cluster.toml``,
``ca.pem`` and the trainer's ``<client-id>.pem`` / ``<client-id>-key.pem``.
"""

import sys

import numpy as np

from mpcagg import SecureAggregator

me = sys.argv[1]
k = int(me.rsplit("-", 1)[1])
update = {"w": np.full((2, 3), 0.25 * k), "b": np.arange(3.0)}  # or model.state_dict()

with SecureAggregator("cluster.toml", cert=f"{me}.pem", key=f"{me}-key.pem") as agg:
    receipt = agg.submit("round-7", update)  # the spec comes from the servers
    if not receipt.complete:  # a party was unreachable: finish the same sharing
        receipt = agg.resume(receipt)
    print(me, "acknowledged by", receipt.acknowledged)
