"""Health probes of one party (``mpcagg health``, local clusters, container probes).

With TLS both of a party's ports require a client certificate from the cluster CA, so
a probe presents the party's own certificate and key: it runs where that party runs.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.identity import read_pem


def check_health(cluster: ClusterConfig, party: int, *, timeout: float = 5.0) -> bool:
    """Whether ``party`` answers SERVING on its client port and on its peer port.

    Raises:
        ConfigError: TLS is on but the cluster file names no cert and key for ``party``
            (or they cannot be read).
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
    targets = [me.address] + ([me.peer_address] if me.peer_address else [])
    return all(_serving(target, credentials, timeout) for target in targets)


def _serving(target: str, credentials: grpc.ChannelCredentials | None, timeout: float) -> bool:
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()
