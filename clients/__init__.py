"""mpcagg clients: trainers share their updates, the collector runs rounds.

Public surface::

    SecureAggregator(cluster, client_id=None, *, cert=None, key=None)  trainer
        .join(round_id) -> RoundSpec                 the spec, from the servers
        .submit(round_id_or_spec, tensors, *, use_grad=False) -> Receipt
        .resume(receipt, tensors=None) -> Receipt   finish the same sharing
    Collector(cluster, client_id=None, *, cert=None, key=None)         orchestrator
        .open_round(round_id, tensors_or_model, ...) -> RoundSpec
        .status(round_id) -> list[RoundInfo]
        .close(round_id, wait_s=30.0) -> RoundInfo
        .aggregate_ring(round_id) -> (uint64 vector, cohort size)
        .result(round_id, spec) -> AggregateResult
    TensorLayout                                       names + shapes <-> flat vector
    Receipt, RoundInfo, RoundState, AggregateResult    what calls return
    RetryPolicy                                        transient-error retries
    ClientCredentials                                  client certificate + key (mutual TLS)
    ClientError and subclasses                         the error tree (clients.errors)
"""

from clients.collector import Collector
from clients.credentials import ClientCredentials
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
    UpdateConflict,
    UploadFailed,
)
from clients.layout import TensorLayout
from clients.results import AggregateResult, Receipt, RoundInfo, RoundState
from clients.trainer import SecureAggregator
from clients.transport import RetryPolicy

__all__ = [
    "AggregateResult",
    "Busy",
    "ClientCredentials",
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
    "UpdateConflict",
    "UploadFailed",
]
