"""all_reduce_mean on real servers: trainers share, wait until the collector commits the
round, and get the cohort mean back in their own dtypes; too early is Pending."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mpcagg import CloseTimeout, InputError, RoundState
from mpcagg.clients.allreduce import Pending, all_reduce_mean, poll
from tests.integration.conftest import Rig, eventually, exact_inputs

SHAPES = (("w", (2, 3)), ("b", (4,)))
TRAINERS = 3


def tensors(x: np.ndarray) -> dict[str, object]:
    return {"w": torch.tensor(x[:6].reshape(2, 3), dtype=torch.float32), "b": x[6:].copy()}


def test_every_trainer_gets_the_mean_in_its_own_dtypes(rig: Rig) -> None:
    spec = rig.open("allreduce-1", SHAPES, min_clients=TRAINERS, trainers_may_fetch=True)
    inputs = exact_inputs(np.random.default_rng(11), TRAINERS, 10)
    early = rig.trainer("ar-0")
    pending = poll(early, spec)
    assert isinstance(pending, Pending)
    assert set(pending.states.values()) == {RoundState.OPEN}
    assert "not committed yet" in str(pending)

    got: dict[int, dict[str, object]] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with rig.trainer(f"ar-{k}") as me:
                got[k] = all_reduce_mean(me, spec, tensors(inputs[k]), timeout_s=30.0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(TRAINERS)]
    for t in threads:
        t.start()
    eventually(
        lambda: (
            rig.all_in(spec.round_id, RoundState.OPEN)
            and all(s.received == TRAINERS for s in rig.status(spec.round_id).values())
        ),
        what="all uploads",
    )
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    for t in threads:
        t.join(timeout=60)
    early.disconnect()
    assert not errors, errors
    mean = np.mean(inputs, axis=0)
    for k in range(TRAINERS):
        w, b = got[k]["w"], got[k]["b"]
        assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.device.type == "cpu"
        np.testing.assert_array_equal(w.numpy(), mean[:6].reshape(2, 3).astype(np.float32))
        assert isinstance(b, np.ndarray) and b.dtype == np.float64
        np.testing.assert_array_equal(b, mean[6:])


def test_a_round_nobody_closes_times_out_saying_it_is_not_committed(rig: Rig) -> None:
    spec = rig.open("allreduce-open", SHAPES, min_clients=1, trainers_may_fetch=True)
    with rig.trainer("ar-alone") as me, pytest.raises(CloseTimeout, match="not committed yet"):
        all_reduce_mean(me, spec, tensors(np.zeros(10)), timeout_s=0.5, interval_s=0.1)


def test_a_round_trainers_may_not_fetch_is_refused_before_sharing(rig: Rig) -> None:
    spec = rig.open("allreduce-closed", SHAPES)
    with rig.trainer("ar-refused") as me, pytest.raises(InputError, match="trainers_may_fetch"):
        all_reduce_mean(me, spec, tensors(np.zeros(10)))
    assert {s.received for s in rig.status(spec.round_id).values()} == {0}
