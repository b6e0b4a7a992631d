"""Configured limits: beyond each one a call gets RESOURCE_EXHAUSTED with a message that
names the limit, and the server stays healthy. Client calls carry deadlines.

One small cluster with deliberately tight ``[limits]``: max vector length, max clients
per round, max concurrent streams (held open by blocking upload streams), max upload
bytes per round, max message size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from mpcagg import Collector, LimitExceeded, SecureAggregator
from mpcagg import Unavailable as ClientUnavailable
from mpcagg.clients.transport import Transport
from mpcagg.mpc.digest import payload_digest
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.v1 import aggregation_pb2 as pb
from tests.security.conftest import (
    RPC_S,
    SecureEnv,
    code_of,
    create_round,
    error_of,
    full_upload,
    manifest_req,
    seed_upload,
    spec_msg,
    start_env,
)

pytestmark = pytest.mark.timeout(120)

LIMITS: dict[str, Any] = {
    "min_cohort": 1,
    "max_vector_length": 64,
    "max_clients_per_round": 4,
    "max_concurrent_streams": 2,
    "max_upload_bytes_per_round": 160,
    "chunk_bytes": 1024,
    "max_message_bytes": 4096,
    "rpc_timeout_s": 10.0,
}
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _spec(round_id: str, length: int, **kw: Any) -> pb.RoundSpec:
    return spec_msg(round_id, length, **{"max_clients": 4, **kw})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    yield from start_env(tmp_path_factory.mktemp("limits"), limits=LIMITS)


def _create(env: SecureEnv, spec: pb.RoundSpec, party: int = 1) -> pb.RoundStatus:
    reply: pb.RoundStatus = env.as_collector(party).CreateRound(
        pb.CreateRoundRequest(spec=spec), timeout=RPC_S
    )
    return reply


def _upload(env: SecureEnv, msgs: list[pb.UploadMessage], client_id: str) -> pb.UploadReceipt:
    reply: pb.UploadReceipt = env.as_trainer(1, client_id).Upload(iter(msgs), timeout=RPC_S)
    return reply


def _exhausted(call: Any, *words: str) -> None:
    err = error_of(call)
    assert err.code() is EXHAUSTED, err.details()
    for word in words:
        assert word in (err.details() or ""), err.details()


def test_max_vector_length(env: SecureEnv) -> None:
    _exhausted(
        lambda: _create(env, _spec("too-long", 65)),
        "vector length 65",
        "limit (64)",
    )
    assert _create(env, _spec("just-fits", 64)).state == pb.OPEN
    # Through the collector client, the error names the server's limit too.
    collector = env.cluster.client_kwargs("collector", "collector")
    with (
        Collector(env.cluster.cluster_file, **collector) as c,
        pytest.raises(LimitExceeded, match=r"exceeds this server's limit \(64\)"),
    ):
        c.open_round("too-long-too", {"w": np.zeros(100)})
    env.assert_all_serving()


def test_max_clients_per_round(env: SecureEnv) -> None:
    _exhausted(
        lambda: _create(env, _spec("crowded", 4, max_clients=5)),
        "max_clients 5",
        "limit (4)",
    )
    # The round's own max_clients is enforced on uploads.
    create_round(env, _spec("pair", 4, min_clients=1, max_clients=2))
    for cid in ("c1", "c2"):
        _upload(env, seed_upload("pair", cid, 1, 4), cid)
    _exhausted(lambda: _upload(env, seed_upload("pair", "c3", 1, 4), "c3"), "max_clients (2)")
    # A retry of an acknowledged upload is still answered.
    assert _upload(env, seed_upload("pair", "c1", 1, 4), "c1").duplicate
    env.assert_all_serving()


def test_max_upload_bytes_per_round(env: SecureEnv) -> None:
    length = 8  # a full share is 64 bytes, a seed 32; the budget is 160
    create_round(env, _spec("budget", length, min_clients=1, max_clients=4))
    data = bytes(range(64))
    # A refused upload (bad digest) gives its reservation back.
    bad = full_upload("budget", "b0", 1, data)
    bad[0].header.payload_digest = payload_digest(b"other")
    assert code_of(lambda: _upload(env, bad, "b0")) is grpc.StatusCode.INVALID_ARGUMENT
    _upload(env, full_upload("budget", "b1", 1, data), "b1")
    _upload(env, full_upload("budget", "b2", 1, data), "b2")
    _upload(env, seed_upload("budget", "b3", 1, length), "b3")  # 160 of 160
    _exhausted(
        lambda: _upload(env, seed_upload("budget", "b4", 1, length), "b4"),
        "max_upload_bytes_per_round (160)",
    )
    env.assert_all_serving()


def test_oversized_messages_are_refused(env: SecureEnv) -> None:
    create_round(env, _spec("big", 8, min_clients=1))
    header = full_upload("big", "m1", 1, bytes(64))[0]
    _exhausted(
        lambda: _upload(env, [header, pb.UploadMessage(chunk=bytes(5000))], "m1"),
        "larger than max",
    )
    spec = _spec("named", 4)
    spec.tensors[0].name = "n" * 5000
    _exhausted(lambda: _create(env, spec), "larger than max")
    env.assert_all_serving()
    # The client id is not wedged by the refused stream.
    assert _upload(env, full_upload("big", "m1", 1, bytes(64)), "m1").party == 1


def _held_upload(
    env: SecureEnv, round_id: str, client_id: str, release: threading.Event
) -> grpc.Future:
    def messages() -> Iterator[pb.UploadMessage]:
        yield from seed_upload(round_id, client_id, 1, 4)
        release.wait(timeout=30)

    future: grpc.Future = env.as_trainer(1, client_id).Upload.future(messages(), timeout=40)
    return future


def test_max_concurrent_streams(env: SecureEnv) -> None:
    """Two upload streams held open fill the cap: a third upload is refused with a message
    naming the limit, while health checks, status queries and peer calls still get in."""
    create_round(env, _spec("streams", 4, min_clients=1))
    release = threading.Event()
    held = [_held_upload(env, "streams", f"h{i}", release) for i in range(2)]
    try:
        probe = seed_upload("streams", "probe", 1, 4)
        probe[0].header.payload_digest = b"\x00" * 32  # refused if it ever gets in
        deadline = time.monotonic() + 20
        err = error_of(lambda: _upload(env, probe, "probe"))
        while err.code() is not EXHAUSTED and time.monotonic() < deadline:
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
            time.sleep(0.05)  # the held streams have not both reached the server yet
            err = error_of(lambda: _upload(env, probe, "probe"))
        assert err.code() is EXHAUSTED, "a third upload was admitted beyond the limit"
        assert "max_concurrent_streams (2)" in (err.details() or "")
        # This limit frees up by itself: the server says so, and the client retries it.
        assert ("mpcagg-retryable", "1") in tuple(err.trailing_metadata() or ())
        # Everything else is still answered while the uploads are at their cap.
        env.assert_all_serving()
        status = env.as_collector(1).GetRound(pb.GetRoundRequest(round_id="streams"), timeout=RPC_S)
        assert status.state == pb.OPEN
        peer = env.peer(1, peer=True, client=env.party_pair(0))
        assert code_of(lambda: peer.Manifest(manifest_req(), timeout=RPC_S)) is (
            grpc.StatusCode.NOT_FOUND
        )
    finally:
        release.set()
    for future in held:
        assert future.result(timeout=RPC_S).party == 1
    assert _upload(env, seed_upload("streams", "h9", 1, 4), "h9").party == 1


class _Recorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Records every call's method and deadline."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def _go(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((details.method, details.timeout))
        return continuation(details, request)

    intercept_unary_unary = _go
    intercept_unary_stream = _go
    intercept_stream_unary = _go
    intercept_stream_stream = _go


def test_every_client_call_has_a_deadline(env: SecureEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder()
    secure_channel = grpc.secure_channel

    def recorded(*args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(secure_channel(*args, **kwargs), recorder)

    monkeypatch.setattr(grpc, "secure_channel", recorded)
    cfg = env.cluster.config
    tensors = {"w": np.arange(4, dtype=np.float64)}
    # d1 sends everything in one message each (UploadWhole); d2's chunks are shorter than
    # its full share, which it streams (Upload).
    small = cfg.limits.model_copy(update={"chunk_bytes": 16})
    configs = {"d1": cfg, "d2": cfg.model_copy(update={"limits": small})}
    with Collector(cfg, **env.cluster.client_kwargs("collector", "collector")) as collector:
        spec = collector.open_round("deadlines", tensors, min_clients=2, max_clients=4)
        for cid in ("d1", "d2"):
            client = env.cluster.client_kwargs(cid)
            with SecureAggregator(configs[cid], cid, **client, progress=False) as trainer:
                trainer.submit(spec, tensors)
        collector.status("deadlines")
        assert collector.close("deadlines", wait_s=20).cohort_size == 2
        result = collector.result("deadlines", spec)
    assert np.array_equal(result.sum["w"], 2 * tensors["w"])
    methods = {m.rsplit("/", 1)[-1] for m, _ in recorder.calls}
    assert {
        "CreateRound", "GetRound", "Upload", "UploadWhole", "CloseRound", "GetAggregateShare",
    } <= methods  # fmt: skip
    limit = cfg.limits.rpc_timeout_s
    undeadlined = [(m, t) for m, t in recorder.calls if t is None or not 0 < t <= limit]
    assert not undeadlined


def test_a_stalled_upload_hits_the_client_deadline_and_frees_its_slot(env: SecureEnv) -> None:
    cfg: ClusterConfig = env.cluster.config
    short = cfg.model_copy(update={"limits": cfg.limits.model_copy(update={"rpc_timeout_s": 1.0})})
    create_round(env, _spec("stall", 4, min_clients=1))
    release = threading.Event()

    def stalled() -> Iterator[pb.UploadMessage]:
        yield from seed_upload("stall", "slow", 1, 4)
        release.wait(timeout=15)

    started = time.monotonic()
    with (
        Transport(short, **env.cluster.client_kwargs("slow")) as transport,
        pytest.raises(ClientUnavailable) as info,
    ):
        transport.upload(1, stalled())
    release.set()
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 5
    # The server forgot the half-made upload: the same client can upload again.
    deadline = time.monotonic() + 10
    while True:
        code = code_of(lambda: _upload(env, seed_upload("stall", "slow", 1, 4), "slow"))
        if code is grpc.StatusCode.OK or time.monotonic() > deadline:
            break
        assert code is grpc.StatusCode.UNAVAILABLE  # "in progress" until the server notices
        time.sleep(0.1)
    assert code is grpc.StatusCode.OK
    env.assert_all_serving()
