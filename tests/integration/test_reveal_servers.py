"""Done when: three real server processes on the CrypTen engine open a round among
themselves (reveal mode ``servers``), with a dropout and a party restart during the
reveal, and every party's revealed sum equals the plaintext fixed-point sum bit for bit.

The restart must happen *during* the reveal, which the test makes and checks: right
after the round commits the leader is frozen (SIGSTOP), so parties 1 and 2 have formed
or are forming the group and wait for its share; then party 2 is killed (SIGKILL) and
started again (a new incarnation), and the leader thawed. Party 1's log shows which
way the restart met it: it had formed the group and forms it again, or it was still
forming it and its one formation lasted the whole restart. All parties reveal. Should
the reveal have finished before the freeze (the leader's revealer is quick), the round
is repeated under a new id, at most three times. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from mpcagg import PermissionDenied, RoundState
from mpcagg.clients.revealed import reveal_status
from mpcagg.clients.transport import RetryPolicy, Transport
from mpcagg.ops.local import LocalCluster
from mpcagg.ops.reveal import read_result
from mpcagg.protocol.errors import ServiceError
from mpcagg.protocol.group import RevealState, RevealStatus
from mpcagg.servers.results import ResultStore
from tests.integration.conftest import LIMITS, Rig, encode_all, eventually, exact_inputs, ring_sum

pytestmark = [pytest.mark.crypten, pytest.mark.timeout(150)]
TRAINERS, SHAPE = 3, (16, 16)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    limits = {**LIMITS, "reveal_timeout_s": 45.0}
    cluster = LocalCluster(
        tmp_path_factory.mktemp("reveal-servers"),
        3,
        engine="crypten",
        limits=limits,
        log_level="INFO",
    )
    try:
        cluster.start(timeout=60.0)
        with Rig(cluster) as r:
            yield r
    finally:
        cluster.stop(timeout=10.0)


def _states(rig: Rig, parties: list[int], round_id: str) -> dict[int, RevealState]:
    """Reveal states of ``parties`` (one quick call each; UNKNOWN if it does not answer)."""
    kwargs = rig.cluster.client_kwargs("collector", "collector")
    out = {}
    with Transport(rig.config, **kwargs, retry=RetryPolicy(attempts=1)) as t:
        for p in parties:
            try:
                out[p] = reveal_status(t, p, round_id).state
            except ServiceError:
                out[p] = RevealState.UNKNOWN
    return out


def test_three_crypten_parties_reveal_among_themselves_through_a_restart(rig: Rig) -> None:
    cluster = rig.cluster
    rng = np.random.default_rng(77)
    inputs = exact_inputs(rng, TRAINERS, int(np.prod(SHAPE)))
    for attempt in range(3):
        round_id = f"together-{attempt}"
        spec = rig.open(round_id, (("w", SHAPE),), min_clients=TRAINERS, reveal="servers")
        for k, x in enumerate(inputs):
            assert rig.submit(spec, f"t-{k}", {"w": x.reshape(SHAPE)}).complete
        dropout = spec.fixed_point.encode(exact_inputs(rng, 1, spec.length)[0], bound=spec.bound)
        rig.upload(round_id, "dropout", rig.shares(round_id, "dropout", dropout), [0, 1])
        info = rig.close(round_id)
        os.kill(cluster.pid(0), signal.SIGSTOP)  # the leader, right after it committed
        try:
            time.sleep(0.3)  # parties 1 and 2 start their reveal and wait for party 0
            during = _states(rig, [1, 2], round_id)
            if set(during.values()) != {RevealState.PENDING}:
                continue  # the reveal finished before the freeze: try again
            killed_at = time.monotonic()
            cluster.kill_party(2, signal.SIGKILL)  # mid-reveal
            cluster.start_party(2, timeout=60.0)  # a new incarnation, same data directory
            restart_s = time.monotonic() - killed_at
        finally:
            os.kill(cluster.pid(0), signal.SIGCONT)
        break
    else:
        pytest.fail("the reveal always finished before the leader could be frozen")
    assert info.state is RoundState.COMMITTED and info.cohort_size == TRAINERS

    def all_revealed() -> list[RevealStatus] | None:
        states = rig.collector.reveal_status(round_id)
        return states if {s.state for s in states} == {RevealState.REVEALED} else None

    states = eventually(all_revealed, timeout=60, what="every party revealed")
    assert [s.cohort_size for s in states] == [TRAINERS] * 3
    expected = ring_sum(encode_all(spec, inputs), spec.length)  # the dropout is left out
    for p in range(3):
        data_dir = cluster.directory / f"party-{p}"
        store = ResultStore.open(data_dir)
        record = store.read(round_id)
        assert record is not None
        np.testing.assert_array_equal(store.revealed_sum(record), expected)  # bit for bit
        decoded = read_result(data_dir, p, round_id).result  # what its operator sees
        assert decoded is not None
        np.testing.assert_array_equal(
            np.asarray(decoded.sum["w"]).ravel(), spec.fixed_point.decode(expected)
        )
    # Party 2 restarted mid-reveal. Either party 1 had formed the group (the leader froze
    # while opening) and formed it again, or it was still forming it and the one group it
    # formed took the whole restart: the new incarnation joined the formation under way.
    log_1 = cluster.log_text(1)
    if "forming the group again" not in log_1:
        done = re.search(
            rf"round {round_id} revealed .* formed in ([0-9.]+)s, .*\((\d+) attempts\)", log_1
        )
        assert done is not None, log_1
        assert int(done[2]) == 1 and float(done[1]) >= restart_s - 0.5, (done[0], restart_s)
    # The collector coordinated the round and learns its reveal state, not its sum.
    with pytest.raises(PermissionDenied):
        rig.collector.result(round_id)
