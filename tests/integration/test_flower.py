"""The Flower ClientApp mod against real servers: the SuperLink gets only a receipt, the
servers get the weighted update, and a message for another round is refused untrained."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from mpcagg import InputError, RoundState
from mpcagg.flower import (
    RECEIPT_KEY,
    ROUND_ID_KEY,
    NodeCredentials,
    SecureAggregationMod,
    round_id_for,
)
from tests.integration.conftest import Rig

GLOBAL = {"w": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), "b": np.zeros(3, np.float32)}
STEPS = np.array([0, 0, 0], np.int64)  # an integer buffer: not part of the update


RUN_ID = 4242


@pytest.fixture(autouse=True)
def flower_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity Flower's runtime gives the process that builds messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", RUN_ID), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def train_message(server_round: int, round_id: str | None = None) -> Message:
    record = ArrayRecord()
    for name, value in {**GLOBAL, "steps": STEPS}.items():
        record[name] = Array(value)
    msg = Message(
        RecordDict({"arrays": record, "config": ConfigRecord({"server-round": server_round})}),
        dst_node_id=1,
        message_type="train",
    )
    config = msg.content.config_records["config"]
    config[ROUND_ID_KEY] = round_id or round_id_for(msg.metadata.run_id, server_round)
    return msg


def context(partition: int) -> Context:
    return Context(
        run_id=RUN_ID,
        node_id=partition + 1,
        node_config={"partition-id": partition},
        state=RecordDict(),
        run_config={},
    )


def trained(step: float, examples: int, calls: list[int]) -> Callable[[Message, Context], Message]:
    """A train function: every floating array moves by ``step``; reports ``examples``."""

    def train(msg: Message, ctx: Context) -> Message:
        calls.append(ctx.node_id)
        arrays = ArrayRecord()
        for name, array in msg.content.array_records["arrays"].items():
            value = array.numpy()
            out = value + np.asarray(step, value.dtype) if value.dtype.kind == "f" else value + 1
            arrays[name] = Array(out)
        metrics = MetricRecord({"num-examples": examples, "train_loss": 0.125})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return train


@pytest.fixture
def mod(rig: Rig) -> Iterator[SecureAggregationMod]:
    def credentials(ctx: Context) -> NodeCredentials:
        files = rig.cluster.client_kwargs(f"flower-{ctx.node_config['partition-id']}")
        return NodeCredentials(str(rig.cluster.cluster_file), str(files["cert"]), str(files["key"]))

    m = SecureAggregationMod(credentials, public_metrics=["train_loss"])
    yield m
    m.close()


def test_the_superlink_gets_only_the_receipt_and_the_servers_the_weighted_update(
    rig: Rig, mod: SecureAggregationMod
) -> None:
    probe = train_message(1)
    round_id = round_id_for(probe.metadata.run_id, 1)
    spec = rig.collector.open_round(
        round_id, GLOBAL, min_clients=2, bound=10.0, weighted=True, max_weight=1000
    )
    calls: list[int] = []
    steps = {0: (0.5, 3), 1: (-0.25, 7)}
    for partition, (step, examples) in steps.items():
        reply = mod(train_message(1), context(partition), trained(step, examples, calls))
        assert not reply.has_error()
        content = reply.content
        assert set(content) == {RECEIPT_KEY, "metrics"}
        assert not content.array_records  # no update, no model
        assert dict(content.metric_records["metrics"]) == {"train_loss": 0.125}  # allow-listed
        receipt = content.config_records[RECEIPT_KEY]
        assert receipt["round-id"] == round_id and receipt["complete"] is True
        assert receipt["acknowledged"] == [0, 1, 2] and receipt["pending"] == []
        assert "num-examples" not in str(dict(receipt)) and str(examples) not in {
            str(v) for v in receipt.values()
        }
    assert calls == [1, 2]

    assert rig.close(round_id).state is RoundState.COMMITTED
    result = rig.collector.result(round_id, spec)
    assert result.total_weight == 10
    assert set(result.mean) == {"w", "b"}  # the integer buffer is not averaged
    expected = (3 * 0.5 + 7 * -0.25) / 10  # float32 steps are exact here
    np.testing.assert_allclose(result.mean["w"], np.full((2, 2), expected), atol=2**-16)
    np.testing.assert_allclose(result.mean["b"], np.full(3, expected), atol=2**-16)


def test_a_message_for_another_round_is_refused_before_training(
    rig: Rig, mod: SecureAggregationMod
) -> None:
    calls: list[int] = []
    with pytest.raises(InputError, match="names mpcagg round 'flwr-4242-round-9'"):
        mod(train_message(2, round_id="flwr-4242-round-9"), context(0), trained(1.0, 1, calls))
    bare = train_message(2)
    del bare.content.config_records["config"][ROUND_ID_KEY]
    with pytest.raises(InputError, match="opens no mpcagg round"):
        mod(bare, context(0), trained(1.0, 1, calls))
    assert calls == []


def test_other_messages_pass_through_untouched(mod: SecureAggregationMod) -> None:
    msg = Message(RecordDict(), dst_node_id=1, message_type="evaluate")
    seen: list[Message] = []

    def evaluate(m: Message, _: Context) -> Message:
        seen.append(m)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 4})}), reply_to=m)

    reply = mod(msg, context(0), evaluate)
    assert seen == [msg] and reply.content.metric_records["metrics"]["num-examples"] == 4
