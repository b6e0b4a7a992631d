"""Health probes of one party (``mpcagg health``, local clusters, container probes).

With TLS both of a party's ports require a client certificate from the cluster CA, so
a probe presents the party's own certificate and key: it runs where that party runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.identity import read_pem
from mpcagg.protocol.version import PROTOCOL_HEADER, VERSION_HEADER


@dataclass(frozen=True, slots=True)
class PortHealth:
    """One port's answer: SERVING or not, and the versions the party announced."""

    port: str  # "client" or "peer"
    target: str
    serving: bool
    version: str = ""
    protocol: str = ""
    detail: str = ""

    def describe(self) -> str:
        state = "serving" if self.serving else f"NOT serving ({self.detail or 'no answer'})"
        versions = f", mpcagg {self.version}, peer protocol {self.protocol}" if self.version else ""
        return f"{self.port} port {self.target}: {state}{versions}"


def check_health(cluster: ClusterConfig, party: int, *, timeout: float = 5.0) -> bool:
    """Whether ``party`` answers SERVING on its client port and on its peer port.

    Raises:
        ConfigError: TLS is on but the cluster file names no cert and key for ``party``
            (or they cannot be read).
    """
    return all(p.serving for p in probe(cluster, party, timeout=timeout))


def probe(cluster: ClusterConfig, party: int, *, timeout: float = 5.0) -> list[PortHealth]:
    """Both ports of ``party``, as :class:`PortHealth` (see :func:`check_health`).

    A port with a ``listen_address`` is probed there (``0.0.0.0`` / ``::`` as loopback),
    expecting the certificate of the advertised host: the probe runs where the party
    runs, and the advertised name may not route back to the host from inside it.
    """
    me = cluster.party(party)
    credentials = None
    if cluster.tls is not None:
        if me.cert is None or me.key is None:
            raise ConfigError(
                f"party {party} needs cert and key in the cluster file: its ports take "
                "no connection without a client certificate (mutual TLS)"
            )
        try:
            credentials = grpc.ssl_channel_credentials(
                read_pem(cluster.tls.ca), read_pem(me.key), read_pem(me.cert)
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read party {party}'s TLS files: {exc}") from None
    ports = [("client", me.address, me.listen_address)]
    if me.peer_address:
        ports.append(("peer", me.peer_address, me.peer_listen_address))
    return [
        _check(name, advertised, listen, credentials, timeout) for name, advertised, listen in ports
    ]


_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "[::1]"}


def _check(
    name: str,
    advertised: str,
    listen: str | None,
    credentials: grpc.ChannelCredentials | None,
    timeout: float,
) -> PortHealth:
    target, options = advertised, []
    if listen is not None:
        host, _, port = listen.rpartition(":")
        target = f"{_LOOPBACK.get(host, host)}:{port}"
        options.append(("grpc.ssl_target_name_override", advertised.rpartition(":")[0]))
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply, call = stub.Check.with_call(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        announced = dict(call.initial_metadata() or ())
        return PortHealth(
            name,
            target,
            bool(reply.status == health_pb2.HealthCheckResponse.SERVING),
            version=str(announced.get(VERSION_HEADER, "")),
            protocol=str(announced.get(PROTOCOL_HEADER, "")),
        )
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return PortHealth(name, target, False, detail=getattr(code, "name", "error"))
    finally:
        channel.close()


def wait_healthy(
    cluster: ClusterConfig, party: int, *, wait: float, timeout: float = 5.0
) -> list[PortHealth]:
    """:func:`probe` until both ports serve or ``wait`` seconds have passed; the last answer."""
    deadline = time.monotonic() + wait
    while True:
        ports = probe(cluster, party, timeout=min(timeout, max(deadline - time.monotonic(), 0.5)))
        if all(p.serving for p in ports) or time.monotonic() >= deadline:
            return ports
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
