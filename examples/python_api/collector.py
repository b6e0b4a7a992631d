"""The orchestrator's process: open a round, wait for the trainers, reveal the mean.

Run in a directory holding ``cluster.toml`` (no server-only fields needed), ``ca.pem``
and the collector's ``collector.pem`` / ``collector-key.pem`` (``mpcagg certs client``).
"""

import time

import numpy as np

from mpcagg import Collector

ROUND, TRAINERS = "round-7", 3

with Collector("cluster.toml", cert="collector.pem", key="collector-key.pem") as collector:
    layout = {"w": np.zeros((2, 3)), "b": np.zeros(3)}  # or a model / its state_dict()
    collector.open_round(ROUND, layout, min_clients=2, bound=10.0, deadline_s=120)
    print("open", flush=True)

    # A real orchestrator waits for its own signal or the deadline; here: all trainers in.
    give_up = time.monotonic() + 60
    while min(s.received for s in collector.status(ROUND)) < TRAINERS:
        if time.monotonic() > give_up:
            raise SystemExit("the trainers did not all submit within 60 s")
        time.sleep(0.2)

    collector.close(ROUND)
    result = collector.result(ROUND)  # the spec is fetched from the servers
    print("cohort", result.cohort_size)
    print("mean w", result.mean["w"].tolist())
