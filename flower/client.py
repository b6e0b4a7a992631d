"""A Flower ClientApp mod that secret-shares the training reply to the mpcagg servers.

Flower's middleware idea (a mod wraps the user's ``@app.train`` function untouched):
the mod lets the train function run, takes its reply (the locally trained arrays and
``num-examples``), computes the update ``Δ = trained − global`` of every floating
array, and submits it to the mpcagg round of this Flower round with the number of
examples as its weight (``SecureAggregator.submit(..., weight=n)``). The reply that
goes back to the SuperLink carries only the receipt: no array, no ``num-examples``,
no other metric unless it is named in ``public_metrics``.

::

    from flwr.clientapp import ClientApp
    from mpcagg.flower import SecureAggregationMod

    app = ClientApp()
    secure = SecureAggregationMod()          # credentials from the node config

    @app.train(mods=[secure])
    def train(msg, context): ...             # returns arrays + metrics["num-examples"]

The node's credentials come from its node config by default (``mpcagg-cluster``,
``mpcagg-cert``, ``mpcagg-key``: file paths), or from a function of the Context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from mpcagg import InputError, Receipt, RetryPolicy, SecureAggregator
from mpcagg.flower.rounds import RECEIPT_KEY, ROUND_ID_KEY, SERVER_ROUND_KEY, round_id_for

CLUSTER_KEY = "mpcagg-cluster"
CERT_KEY = "mpcagg-cert"
KEY_KEY = "mpcagg-key"


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """Where a SuperNode's trainer finds the cluster file and its client certificate."""

    cluster: str
    cert: str | None = None
    key: str | None = None

    def __repr__(self) -> str:
        return f"NodeCredentials(cluster={self.cluster!r}, cert={self.cert!r}, key=<path>)"


def from_node_config(context: Context) -> NodeCredentials:
    """Credentials from the node config: ``mpcagg-cluster`` (required), ``mpcagg-cert``
    and ``mpcagg-key`` (paths, for a TLS cluster). Raises :class:`InputError`."""
    cfg = context.node_config
    cluster = cfg.get(CLUSTER_KEY)
    if not isinstance(cluster, str) or not cluster:
        raise InputError(
            f"node {context.node_id}: the node config names no {CLUSTER_KEY!r} "
            "(the mpcagg cluster file); start the SuperNode with --node-config "
            f"\"{CLUSTER_KEY}='...' {CERT_KEY}='...' {KEY_KEY}='...'\""
        )
    cert, key = cfg.get(CERT_KEY), cfg.get(KEY_KEY)
    return NodeCredentials(
        cluster, str(cert) if cert is not None else None, str(key) if key is not None else None
    )


class SecureAggregationMod:
    """ClientApp mod: share the train reply's update to mpcagg, reply with the receipt.

    ``credentials`` maps the Context to :class:`NodeCredentials` (default
    :func:`from_node_config`). ``arrays_key``, ``metrics_key`` and ``weight_key`` name
    the records of Flower's FedAvg convention. ``clip`` (e.g.
    ``lambda u: clip_l2(u, 5.0)`` with :func:`mpcagg.flower.clip_l2`) maps each update
    to the one shared. Only metrics named in ``public_metrics`` go back in plaintext.

    Raises (and Flower turns into an error reply, so nothing of the update leaves):
    :class:`InputError` if the message names no mpcagg round or another round than
    the one its Flower run and round derive, the reply has no arrays or weight, or the
    update does not fit the round (beyond its bound: clip it); an mpcagg error if no
    server acknowledged the upload.
    """

    def __init__(
        self,
        credentials: Callable[[Context], NodeCredentials] = from_node_config,
        *,
        arrays_key: str = "arrays",
        metrics_key: str = "metrics",
        config_key: str = "config",
        weight_key: str = "num-examples",
        public_metrics: Iterable[str] = (),
        clip: Callable[[dict[str, npt.NDArray[np.float64]]], dict[str, npt.NDArray[np.float64]]]
        | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.credentials = credentials
        self.arrays_key = arrays_key
        self.metrics_key = metrics_key
        self.config_key = config_key
        self.weight_key = weight_key
        self.public_metrics = tuple(public_metrics)
        self.clip = clip
        self.retry = retry
        self._trainers: dict[NodeCredentials, SecureAggregator] = {}
        self._lock = threading.Lock()

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, context)
        round_id = self._round_id(msg)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        update, weight, public = self._update(msg, reply)
        receipt = self._trainer(context).submit(round_id, update, weight=weight)
        content = RecordDict({RECEIPT_KEY: receipt_record(receipt)})
        if public:
            content[self.metrics_key] = MetricRecord(public)
        return Message(content, reply_to=msg)

    def close(self) -> None:
        """Close every trainer's channels."""
        with self._lock:
            for trainer in self._trainers.values():
                trainer.disconnect()
            self._trainers.clear()

    # -- steps -------------------------------------------------------------------------

    def _round_id(self, msg: Message) -> str:
        config = msg.content.config_records.get(self.config_key)
        if config is None or ROUND_ID_KEY not in config or SERVER_ROUND_KEY not in config:
            raise InputError(
                "this train message opens no mpcagg round (its config has no "
                f"{ROUND_ID_KEY!r} and {SERVER_ROUND_KEY!r}): the ServerApp must run "
                "mpcagg.flower.SecureFedAvg; nothing was trained or sent"
            )
        server_round = config[SERVER_ROUND_KEY]
        if not isinstance(server_round, int):
            raise InputError(f"{SERVER_ROUND_KEY!r} must be an int, got {server_round!r}")
        expected = round_id_for(msg.metadata.run_id, server_round)
        if config[ROUND_ID_KEY] != expected:
            raise InputError(
                f"the train message names mpcagg round {config[ROUND_ID_KEY]!r}, but run "
                f"{msg.metadata.run_id} round {server_round} is {expected!r}; nothing was sent"
            )
        return expected

    def _update(
        self, msg: Message, reply: Message
    ) -> tuple[dict[str, npt.NDArray[np.float64]], float, dict[str, Any]]:
        start = msg.content.array_records.get(self.arrays_key)
        trained = reply.content.array_records.get(self.arrays_key)
        metrics = reply.content.metric_records.get(self.metrics_key)
        if start is None or trained is None:
            raise InputError(
                f"the train message and its reply must both carry the ArrayRecord "
                f"{self.arrays_key!r}"
            )
        if metrics is None or self.weight_key not in metrics:
            raise InputError(
                f"the train reply must carry MetricRecord {self.metrics_key!r} with "
                f"{self.weight_key!r} (the trainer's weight)"
            )
        update = array_delta(start, trained)
        if self.clip is not None:
            update = self.clip(update)
        weight = metrics[self.weight_key]
        if not isinstance(weight, (int, float)):
            raise InputError(f"{self.weight_key!r} must be a number, got {type(weight).__name__}")
        public = {k: metrics[k] for k in self.public_metrics if k in metrics}
        return update, float(weight), public

    def _trainer(self, context: Context) -> SecureAggregator:
        creds = self.credentials(context)
        with self._lock:
            trainer = self._trainers.get(creds)
            if trainer is None:
                trainer = SecureAggregator(
                    Path(creds.cluster),
                    cert=creds.cert,
                    key=creds.key,
                    progress=False,
                    retry=self.retry,
                )
                self._trainers[creds] = trainer
            return trainer


def floating(record: ArrayRecord) -> dict[str, npt.NDArray[Any]]:
    """The floating arrays of ``record``, by name, in its order (integer buffers such as
    batch norm's ``num_batches_tracked`` are not averaged)."""
    arrays = {name: array.numpy() for name, array in record.items()}
    return {name: a for name, a in arrays.items() if a.dtype.kind == "f"}


def array_delta(start: ArrayRecord, trained: ArrayRecord) -> dict[str, npt.NDArray[np.float64]]:
    """``trained − start`` in float64 for every floating array of ``start``.

    Raises :class:`InputError` if ``trained`` lacks one or has another shape.
    """
    before = floating(start)
    after = {name: array.numpy() for name, array in trained.items()}
    missing = [n for n in before if n not in after]
    if missing:
        raise InputError(f"the trained arrays lack {missing}")
    wrong = [n for n, a in before.items() if after[n].shape != a.shape]
    if wrong:
        raise InputError(f"the trained arrays {wrong} changed shape")
    return {
        name: after[name].astype(np.float64) - a.astype(np.float64) for name, a in before.items()
    }


def receipt_record(receipt: Receipt) -> ConfigRecord:
    """What a trainer tells the SuperLink: which parties hold its sharing (no data)."""
    return ConfigRecord(
        {
            "round-id": receipt.round_id,
            "client-id": receipt.client_id,
            "sharing-id": receipt.sharing_id,
            "acknowledged": list(receipt.acknowledged),
            "pending": list(receipt.pending),
            "complete": receipt.complete,
        }
    )
