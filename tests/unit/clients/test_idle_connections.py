"""A party closes client connections idle for ``limits.idle_connection_s`` (gRPC keeps
buffers per connection, so trainers that keep theirs between rounds would hold a party's
memory), and the client dials again on its next call without noticing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np

from mpcagg import Collector
from mpcagg.clients.transport import Transport
from tests.unit.clients.inprocess import InProcessCluster

WAIT_S = 5.0


def _states(channel: grpc.Channel) -> tuple[list[grpc.ChannelConnectivity], threading.Event]:
    """Record the channel's connectivity changes; the event is set once it goes IDLE
    after having been READY."""
    seen: list[grpc.ChannelConnectivity] = []
    idle = threading.Event()

    def on_change(state: grpc.ChannelConnectivity) -> None:
        seen.append(state)
        if state is grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in seen:
            idle.set()

    channel.subscribe(on_change, try_to_connect=False)
    return seen, idle


@contextmanager
def _connected(
    tmp_path: Path, idle_connection_s: float
) -> Iterator[tuple[Transport, list[grpc.ChannelConnectivity], threading.Event]]:
    """A 2-party cluster with round "r1" open, and a transport whose channel to party 0
    has answered one call; its connectivity changes are recorded from then on."""
    cluster = InProcessCluster(tmp_path, 2, idle_connection_s=idle_connection_s)
    try:
        with Collector(cluster.config) as col:
            col.open_round("r1", {"w": np.zeros(4, dtype=np.float32)}, min_clients=1)
        with Transport(cluster.config) as transport:
            assert transport.get_round(0, "r1").round_id == "r1"
            yield (transport, *_states(transport.channel(0)))
    finally:
        cluster.stop_all()


def test_an_idle_client_connection_is_closed_and_dialled_again(tmp_path: Path) -> None:
    with _connected(tmp_path, 0.3) as (transport, seen, idle):
        assert idle.wait(WAIT_S), f"the connection stayed open: {seen}"
        # The next call dials again and is answered.
        assert transport.get_round(0, "r1").round_id == "r1"


def test_with_no_limit_an_idle_connection_stays_open(tmp_path: Path) -> None:
    with _connected(tmp_path, 0) as (_, seen, idle):
        time.sleep(1.0)
        assert not idle.is_set(), seen
