"""gRPC to the cluster's servers: channels, credentials, timeouts, retries, errors.

One channel per party, dialled lazily from the cluster file: plaintext when the
cluster has no ``[tls]`` table, else mutual TLS: the server is verified against the
cluster's CA and the client presents its client certificate
(:class:`clients.credentials.ClientCredentials`), which every party's client port
requires. The private key is never logged or shown. Every call has the cluster's
``rpc_timeout_s`` deadline. :func:`translate` is the one place where
``grpc.RpcError`` becomes a :class:`clients.errors.ServiceError`; :meth:`Transport.retrying`
retries the transient ones (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED) with bounded,
exponentially growing, jittered back-off.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from mpcagg.clients.credentials import (
    ClientCredentials,
    PathLike,
    client_credentials,
    read_file,
    resolve_client_id,
)
from mpcagg.protocol.cluster import ClusterConfig, load_cluster
from mpcagg.protocol.errors import ConfigError, MpcaggError, ServiceError, Unavailable
from mpcagg.protocol.spec import RoundSpec
from mpcagg.protocol.state import AggregateShare, RoundStatus, UploadAck
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from mpcagg.wire import convert
from mpcagg.wire import framing as wire
from mpcagg.wire.status import translate

log = logging.getLogger("mpcagg.clients")

T = TypeVar("T")

_STUB: Any = pb_grpc.AggregationStub  # generated without annotations


@contextlib.contextmanager
def _rpc(party: int, method: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise translate(exc, party, method) from None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries of transient errors: ``attempts`` tries in all, back-off
    ``initial_backoff_s · multiplier^k`` capped at ``max_backoff_s``, each scaled by a
    random factor in [0.5, 1] so clients that failed together do not retry together."""

    attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("back-off times must be >= 0 and the multiplier >= 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        return base * random.uniform(0.5, 1.0)


def retry_call(
    op: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    what: str = "call",
) -> T:
    """``op()``, retried while it raises a transient :class:`ServiceError`.

    Stops after ``policy.attempts`` tries, or when the next back-off would pass
    ``deadline`` (a ``time.monotonic()`` value); then re-raises the last error.
    """
    for attempt in range(policy.attempts):
        try:
            return op()
        except ServiceError as exc:
            if not exc.transient or attempt + 1 >= policy.attempts:
                raise
            delay = policy.backoff(attempt)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            log.info("%s: %s; retrying in %.2fs", what, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def resolve_cluster(cluster: ClusterConfig | str | Path) -> ClusterConfig:
    """A cluster config, loading it from a file if given a path."""
    if isinstance(cluster, ClusterConfig):
        return cluster
    return load_cluster(cluster)


class Transport:
    """Channels to every party of a cluster; thread-safe. Close it (or use ``with``)."""

    def __init__(
        self,
        cluster: ClusterConfig | str | Path,
        *,
        cert: ClientCredentials | PathLike | None = None,
        key: PathLike | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``cert``/``key``: the client certificate and key (two PEM file paths, or a
        :class:`ClientCredentials`), required on a TLS cluster.

        Raises:
            ConfigError: unreadable cluster file, CA, certificate or key; a key that is
                not the certificate's; a TLS cluster and no client certificate.
        """
        self.cluster = resolve_cluster(cluster)
        self.credentials = client_credentials(cert, key)
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self._lock = threading.Lock()
        self._channels: dict[int, tuple[grpc.Channel, pb_grpc.AggregationStub]] = {}
        self._pool: ThreadPoolExecutor | None = None  # one per transport, not per call
        self._ca: bytes | None = (
            read_file(self.cluster.tls.ca, "cluster CA") if self.cluster.tls is not None else None
        )
        if self._ca is not None and self.credentials is None:
            raise ConfigError(
                f"cluster {self.cluster.name!r} uses TLS: every party requires a client "
                "certificate issued by the cluster CA; pass cert= and key= (PEM files, e.g. "
                "from `mpcagg certs client`)"
            )

    def client_id(self, given: str | None, default: str | None = None) -> str:
        """The client id to act as: ``given``, else the one the certificate names, else
        ``default``; :class:`InputError` if ``given`` and the certificate disagree."""
        return resolve_client_id(given, self.credentials, default)

    @property
    def n_parties(self) -> int:
        """Parties in the cluster."""
        return self.cluster.n_parties

    @property
    def timeout(self) -> float:
        """Each call's deadline in seconds (the cluster's ``rpc_timeout_s``)."""
        return self.cluster.limits.rpc_timeout_s

    def __repr__(self) -> str:
        tls = "mutual tls" if self._ca is not None else "insecure"
        return f"Transport(cluster={self.cluster.name!r}, parties={self.n_parties}, {tls})"

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every channel (later calls dial again)."""
        with self._lock:
            channels, self._channels = self._channels, {}
            pool, self._pool = self._pool, None
        for channel, _ in channels.values():
            channel.close()
        if pool is not None:
            pool.shutdown(wait=False)

    # -- calls (one attempt each; wrap in :meth:`retrying`) -----------------------------

    def create_round(self, party: int, spec: RoundSpec) -> RoundStatus:
        """Create ``spec``'s round at ``party``; its status. Raises the translated
        :class:`ServiceError` (:class:`AlreadyExists` if it holds the round already)."""
        with _rpc(party, "CreateRound"):
            msg = self._stub(party).CreateRound(
                convert.create_round_request(spec), **self._call_options()
            )
        return convert.status_from_proto(msg)

    def get_round(self, party: int, round_id: str) -> RoundStatus:
        """``party``'s status of ``round_id``, with its spec. Raises the translated
        :class:`ServiceError` (:class:`NotFound` for an unknown round), or
        :class:`ProtocolError` for an invalid spec."""
        with _rpc(party, "GetRound"):
            msg = self._stub(party).GetRound(
                convert.get_round_request(round_id), **self._call_options()
            )
        return convert.status_from_proto(msg)

    def close_round(self, party: int, round_id: str, timeout: float | None = None) -> RoundStatus:
        """Ask ``party`` (the leader) to close ``round_id``, within ``timeout`` seconds
        (default :attr:`timeout`); its status. Raises the translated :class:`ServiceError`."""
        with _rpc(party, "CloseRound"):
            msg = self._stub(party).CloseRound(
                convert.close_round_request(round_id), **self._call_options(timeout)
            )
        return convert.status_from_proto(msg)

    def upload(self, party: int, messages: Iterator[Any]) -> UploadAck:
        """Stream ``messages`` (a header, then chunks: :func:`wire.framing.upload_messages`)
        to ``party``; its acknowledgement. Raises the translated :class:`ServiceError`
        (:class:`LimitExceeded` for a message beyond ``max_message_bytes``)."""
        with _rpc(party, "Upload"):
            msg = self._stub(party).Upload(messages, **self._call_options())
        return convert.ack_from_proto(msg)

    def upload_whole(self, party: int, request: Any) -> UploadAck:
        """Send one upload as a single message (:func:`wire.framing.upload_request`) to
        ``party``; its acknowledgement. Raises as :meth:`upload`."""
        with _rpc(party, "UploadWhole"):
            msg = self._stub(party).UploadWhole(request, **self._call_options())
        return convert.ack_from_proto(msg)

    def aggregate_share(self, party: int, round_id: str) -> AggregateShare:
        """``party``'s aggregate share of committed ``round_id``. Raises the translated
        :class:`ServiceError` (:class:`RoundNotOpen` if not committed), or
        :class:`ProtocolError` for a malformed stream."""
        with _rpc(party, "GetAggregateShare"):
            stream = self._stub(party).GetAggregateShare(
                convert.aggregate_share_request(round_id), **self._call_options()
            )
            try:
                return wire.read_aggregate_share(
                    stream, party=party, max_length=self.cluster.limits.max_vector_length
                )
            finally:
                stream.cancel()  # no-op once the stream has ended

    # -- helpers -----------------------------------------------------------------------

    def retrying(
        self, op: Callable[[], T], *, what: str = "call", deadline: float | None = None
    ) -> T:
        """``op()`` retried on transient errors under this transport's policy."""
        return retry_call(op, self.retry, sleep=self.sleep, deadline=deadline, what=what)

    def each_party(
        self, op: Callable[[int], T], parties: Sequence[int] | None = None
    ) -> dict[int, T | MpcaggError]:
        """``op(party)`` for every party concurrently; a :class:`MpcaggError` is returned,
        not raised, in that party's slot (other exceptions propagate)."""
        targets = list(range(self.n_parties)) if parties is None else list(parties)
        if not targets:
            return {}

        def guarded(party: int) -> T | MpcaggError:
            try:
                return op(party)
            except MpcaggError as exc:
                return exc

        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    2 * self.n_parties, thread_name_prefix="mpcagg-party"
                )
            pool = self._pool
        futures = {p: pool.submit(guarded, p) for p in targets}
        return {p: f.result() for p, f in futures.items()}

    def _call_options(self, timeout: float | None = None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout}

    def channel(self, party: int) -> grpc.Channel:
        """The channel to ``party``'s client port (for services beside Aggregation)."""
        self._stub(party)
        with self._lock:
            return self._channels[party][0]

    def _stub(self, party: int) -> Any:
        with self._lock:
            entry = self._channels.get(party)
            if entry is None:
                channel = self._dial(party)
                entry = (channel, _STUB(channel))
                self._channels[party] = entry
        return entry[1]

    def _dial(self, party: int) -> grpc.Channel:
        address = self._address(party)
        limit = self.cluster.limits.max_message_bytes
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # A server that comes back is dialled again within seconds (gRPC's default
            # back-off grows to two minutes, longer than any client retry waits).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self._ca is None:
            return grpc.insecure_channel(address, options=options)
        assert self.credentials is not None  # checked in __init__
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._ca,
            private_key=self.credentials.key_pem,
            certificate_chain=self.credentials.cert_pem,
        )
        return grpc.secure_channel(address, credentials, options=options)

    def _address(self, party: int) -> str:
        address = self.cluster.address_of(party)
        if address.endswith(":0"):
            raise Unavailable("its address has port 0 (not started?)", party=party, method="dial")
        return address
