"""mpcagg: secure aggregation of model updates across three or more servers.

Public surface::

    SecureAggregator(cluster, client_id=None, *, cert=None, key=None)  trainer
        .join(round_id) -> RoundSpec                 the spec, from the servers
        .submit(round_id_or_spec, tensors, *, use_grad=False, weight=None) -> Receipt
        .resume(receipt, tensors=None) -> Receipt   finish the same sharing
        .status(round_id) -> list[RoundStatus]       e.g. wait for COMMITTED
        .result(spec) -> AggregateResult             trainers_may_fetch rounds
    Collector(cluster, client_id=None, *, cert=None, key=None)         orchestrator
        .open_round(round_id, tensors_or_model, ..., weighted=False, max_weight=None,
                    reveal="collector" | "servers")
        .reveal_status(round_id) -> list[RevealStatus]   reveal mode "servers": no sum
        .status(round_id) -> list[RoundStatus]
        .close(round_id, wait_s=30.0) -> RoundStatus
        .aggregate_ring(round_id) -> (uint64 vector, cohort size)
        .result(round_id, spec) -> AggregateResult
    TensorLayout                                       names + shapes <-> flat vector
    Receipt, RoundStatus, RoundState, AggregateResult    what calls return
    RevealStatus, RevealState                          a party's reveal (mode "servers")
    RetryPolicy                                        transient-error retries
    ClientCredentials                                  client certificate + key (mutual TLS)
    MpcaggError and subclasses                         the error tree (clients.errors)
"""

from mpcagg.clients.collector import Collector
from mpcagg.clients.credentials import ClientCredentials
from mpcagg.clients.layout import TensorLayout
from mpcagg.clients.results import AggregateResult, Receipt
from mpcagg.clients.trainer import SecureAggregator
from mpcagg.clients.transport import RetryPolicy
from mpcagg.protocol.errors import (
    AlreadyExists,
    Busy,
    CloseTimeout,
    ConfigError,
    InputError,
    InvalidArgument,
    LayoutError,
    LimitExceeded,
    MpcaggError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RoundNotOpen,
    RoundStateError,
    ServerError,
    ServiceError,
    Unauthenticated,
    Unavailable,
    UpdateConflict,
    UploadFailed,
)
from mpcagg.protocol.group import RevealState, RevealStatus
from mpcagg.protocol.state import RoundState, RoundStatus

__all__ = [
    "AggregateResult",
    "AlreadyExists",
    "Busy",
    "ClientCredentials",
    "CloseTimeout",
    "Collector",
    "ConfigError",
    "InputError",
    "InvalidArgument",
    "LayoutError",
    "LimitExceeded",
    "MpcaggError",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "Receipt",
    "RetryPolicy",
    "RevealState",
    "RevealStatus",
    "RoundNotOpen",
    "RoundState",
    "RoundStateError",
    "RoundStatus",
    "SecureAggregator",
    "ServerError",
    "ServiceError",
    "TensorLayout",
    "Unauthenticated",
    "Unavailable",
    "UpdateConflict",
    "UploadFailed",
]
