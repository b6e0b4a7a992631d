"""SIGTERM drains: an upload in flight when the server is told to stop is finished,
acknowledged and durable; the server then exits cleanly."""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mpcagg.protocol.state import UploadAck
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire import framing as wire
from tests.integration.conftest import Rig, running_cluster


def _slow(
    messages: Iterator[pb.UploadMessage], started: threading.Event
) -> Iterator[pb.UploadMessage]:
    """Yield the header and first chunk, then pause before the rest (the server is
    sent SIGTERM during the pause)."""
    for i, msg in enumerate(messages):
        if i == 2:
            started.set()
            time.sleep(1.5)
        yield msg


def test_sigterm_finishes_the_upload_in_flight_then_exits_cleanly(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as cluster, Rig(cluster) as rig:
        spec = rig.open("drain-1", (("w", (4096,)),))
        encoded = spec.fixed_point.encode(np.linspace(-1, 1, 4096), bound=spec.bound)
        client = "drainer"
        uploads = rig.shares("drain-1", client, encoded)
        full = next(u for u in uploads if u.payload_bytes > 32)
        party = full.party
        messages = wire.upload_messages(
            full,
            round_id="drain-1",
            client_id=client,
            sharing_id=secrets.token_bytes(16),
            chunk_bytes=8192,  # 4 chunks: the pause falls mid-stream
        )
        started = threading.Event()
        result: dict[str, UploadAck | BaseException] = {}

        def upload() -> None:
            try:
                result["ack"] = rig.transport(client).upload(party, _slow(messages, started))
            except BaseException as exc:
                result["ack"] = exc

        thread = threading.Thread(target=upload)
        thread.start()
        assert started.wait(20), "the upload did not start"
        code = cluster.kill_party(party, signal.SIGTERM, timeout=30)
        thread.join(30)
        assert not thread.is_alive()
        ack = result["ack"]
        assert isinstance(ack, UploadAck), f"upload in flight was not finished: {ack!r}"
        assert ack.party == party and not ack.duplicate
        assert code == 0, f"party {party} exited with {code} after SIGTERM"

        # Durable: the restarted server still holds the acknowledged upload.
        cluster.start_party(party)
        assert rig.status("drain-1")[party].received == 1
