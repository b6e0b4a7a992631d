""" "The sum is exact" under retries, outages and lost acknowledgements, on real server
processes (TLS, client certificates).

- A trainer that resubmits the same update after an outage completes the *same*
  sharing: parties that hold it answer "duplicate", the one that was down receives
  the missing share, and the whole round's sum stays exact.
- A party whose acknowledgement is lost shows as *unknown* in the receipt (never
  "failed": it may hold the share); resuming settles it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mpcagg import RetryPolicy, RoundState
from mpcagg.mpc import full_party_for
from tests.integration.conftest import Rig, exact_inputs, running_cluster

PATIENT = RetryPolicy(attempts=6, initial_backoff_s=0.2, max_backoff_s=2.0)


def test_resubmitting_after_an_outage_completes_the_same_sharing(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    with running_cluster(tmp_path / "c4", n_parties=4) as cluster, Rig(cluster) as rig:
        spec = rig.open("outage", (("w", (64,)),), min_clients=2, bound=1.0, max_clients=14)
        inputs = [rng.integers(-(1 << 15), 1 << 15, size=64) / 65536.0 for _ in range(3)]
        trainers = [rig.trainer(f"t{k}", retry=PATIENT) for k in range(3)]
        cluster.kill_party(1)
        first = [t.submit(spec, {"w": x}) for t, x in zip(trainers, inputs, strict=True)]
        for k, receipt in enumerate(first):
            # Seeds first: with party 1's seed missing, the full share is not sent yet.
            full = full_party_for(f"t{k}", 4)
            assert full != 1 and sorted(receipt.failed) == sorted({1, full}), receipt
            assert "not sent" in receipt.failed[full] and receipt.unknown == {}
            assert receipt.acknowledged == tuple(p for p in range(4) if p not in (1, full))
        cluster.start_party(1)
        again = [t.submit(spec, {"w": x}) for t, x in zip(trainers, inputs, strict=True)]
        for before, after in zip(first, again, strict=True):
            assert after.complete and after.sharing_id == before.sharing_id
            assert after.duplicates == before.acknowledged  # already held there
        for t in trainers:
            t.disconnect()
        assert rig.close("outage").state is RoundState.COMMITTED
        result = rig.collector.result("outage", spec)
        assert result.cohort_size == 3
        assert np.array_equal(result.sum["w"], np.sum(inputs, axis=0))


class DropReplies:
    """A TCP relay to one party that can swallow everything the server sends back.

    With ``drop`` set, the request still reaches the server (which stores the share)
    while its answer never comes back: a lost acknowledgement. Threads are daemons and
    every socket closes with the relay.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.drop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target, timeout=30)
                self._sockets += [client, server]
                threading.Thread(
                    target=self._pipe, args=(client, server, False), daemon=True
                ).start()
                threading.Thread(
                    target=self._pipe, args=(server, client, True), daemon=True
                ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not (reply and self.drop.is_set()):
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.close()

    def close(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@contextlib.contextmanager
def relay(target: tuple[str, int]) -> Iterator[DropReplies]:
    r = DropReplies(target)
    try:
        yield r
    finally:
        r.close()


def test_a_lost_acknowledgement_is_unknown_and_resuming_settles_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    with running_cluster(tmp_path / "c3", n_parties=3) as cluster, Rig(cluster) as rig:
        spec = rig.open("lost-ack", (("w", (32,)),), min_clients=1)
        config = cluster.config
        victim = 2
        address = config.party(victim).address
        host, _, port = address.rpartition(":")
        with relay((host, int(port))) as proxy:
            parties = [
                p.model_copy(update={"address": f"127.0.0.1:{proxy.port}"}) if p.id == victim else p
                for p in config.parties
            ]
            limits = config.limits.model_copy(update={"rpc_timeout_s": 2.0})
            proxied = config.model_copy(update={"parties": parties, "limits": limits})
            x = exact_inputs(rng, 1, 32)[0]
            with rig.trainer("lossy", config=proxied, retry=RetryPolicy(attempts=1)) as t:
                assert t.join("lost-ack").digest == spec.digest  # TLS is up through the relay
                proxy.drop.set()
                receipt = t.submit(spec, {"w": x})
                # Unknown, not failed; and the full share waits until that seed is settled.
                full = full_party_for("lossy", 3)
                assert sorted(receipt.unknown) == [victim] and list(receipt.failed) == [full]
                assert "not sent" in receipt.failed[full]
                assert not receipt.complete
                # The party did store it: the receipt claimed no more than the trainer knew.
                assert rig.status("lost-ack")[victim].received == 1
                proxy.drop.clear()
                t.disconnect()  # the old connection lost bytes mid-stream: dial again
                settled = t.resume(receipt)
        assert settled.complete and settled.duplicates == (victim,)
        assert rig.close("lost-ack").cohort_size == 1
        assert np.array_equal(rig.collector.result("lost-ack", spec).sum["w"], x)
