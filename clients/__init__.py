"""mpcagg clients: trainers share their updates, the collector runs rounds.

Public surface::

    SecureAggregator(cluster, client_id, token=None, *, progress=None)   trainer
        .submit(spec, tensors, *, use_grad=False) -> Receipt
    Collector(cluster, client_id="collector", token=None)                 orchestrator
        .open_round(round_id, tensors_or_model, ...) -> RoundSpec
        .status(round_id) -> list[RoundInfo]
        .close(round_id, wait_s=30.0) -> RoundInfo
        .aggregate_ring(round_id) -> (uint64 vector, cohort size)
        .result(round_id, spec) -> AggregateResult
    TensorLayout                                       names + shapes <-> flat vector
    Receipt, RoundInfo, RoundState, AggregateResult    what calls return
    RetryPolicy                                        transient-error retries
    ClientError and subclasses                         the error tree (clients.errors)
"""

from clients.collector import Collector
from clients.errors import (
    Busy,
    ClientError,
    CloseTimeout,
    ConfigError,
    Conflict,
    InputError,
    InvalidInput,
    LayoutError,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
    RoundNotFound,
    RoundRejected,
    RoundStateError,
    RpcFailed,
    ServerError,
    Unauthenticated,
    Unavailable,
    UploadFailed,
)
from clients.layout import TensorLayout
from clients.results import AggregateResult, Receipt, RoundInfo, RoundState
from clients.trainer import SecureAggregator
from clients.transport import RetryPolicy

__all__ = [
    "AggregateResult",
    "Busy",
    "ClientError",
    "CloseTimeout",
    "Collector",
    "ConfigError",
    "Conflict",
    "InputError",
    "InvalidInput",
    "LayoutError",
    "LimitExceeded",
    "PermissionDenied",
    "ProtocolError",
    "Receipt",
    "RetryPolicy",
    "RoundInfo",
    "RoundNotFound",
    "RoundRejected",
    "RoundState",
    "RoundStateError",
    "RpcFailed",
    "SecureAggregator",
    "ServerError",
    "TensorLayout",
    "Unauthenticated",
    "Unavailable",
    "UploadFailed",
]
