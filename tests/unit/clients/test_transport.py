"""Transport: error translation, retries, credentials, channel construction."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients import transport as tr
from clients.errors import (
    Busy,
    ConfigError,
    Conflict,
    InvalidInput,
    LimitExceeded,
    RoundRejected,
    RoundStateError,
    ServerError,
    Unavailable,
)
from servers.config import ClusterConfig, Limits, TlsConfig
from tests.unit.clients import make_cluster, party_toml


class FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def cluster(n: int = 3, **kw: Any) -> ClusterConfig:
    return make_cluster([f"127.0.0.1:{50051 + i}" for i in range(n)], **kw)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.FAILED_PRECONDITION, RoundRejected),
        (grpc.StatusCode.ALREADY_EXISTS, Conflict),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.ABORTED, Unavailable),
        (grpc.StatusCode.INTERNAL, ServerError),
    ],
)
def test_translate(code: grpc.StatusCode, cls: type) -> None:
    err = tr.translate(FakeRpcError(code, "vector length 1000 does not match (4096)"), 2, "Upload")
    assert type(err) is cls
    assert (err.party, err.method, err.code) == (2, "Upload", code.name)
    assert err.server_message == "vector length 1000 does not match (4096)"
    assert (
        str(err)
        == f"party 2 refused Upload ({code.name}): vector length 1000 does not match (4096)"
    )
    assert err.transient == (cls is Unavailable)


def test_resource_exhausted_is_retried_only_when_the_server_says_it_frees_up() -> None:
    full = tr.translate(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_clients"), 0, "U")
    assert type(full) is LimitExceeded and not full.transient
    busy = tr.translate(
        FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_concurrent_streams",
            (("mpcagg-retryable", "1"),),
        ),
        0,
        "Upload",
    )
    assert type(busy) is Busy and isinstance(busy, LimitExceeded) and busy.transient


def test_round_rejected_is_a_round_state_error() -> None:
    err = tr.translate(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "closed"), 0, "Upload")
    assert isinstance(err, RoundStateError)


def test_retry_call_retries_transient_then_succeeds() -> None:
    sleeps: list[float] = []
    calls = iter(
        [
            Unavailable(0, "GetRound", "UNAVAILABLE", ""),
            Unavailable(0, "GetRound", "ABORTED", ""),
            42,
        ]
    )

    def op() -> int:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    policy = tr.RetryPolicy(attempts=3, initial_backoff_s=1.0, max_backoff_s=1.5, multiplier=2.0)
    assert tr.retry_call(op, policy, sleep=sleeps.append) == 42
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 0.75 <= sleeps[1] <= 1.5


def test_retry_call_is_bounded_and_does_not_retry_permanent_errors() -> None:
    sleeps: list[float] = []
    count = 0

    def unavailable() -> None:
        nonlocal count
        count += 1
        raise Unavailable(1, "Upload", "UNAVAILABLE", "down")

    with pytest.raises(Unavailable):
        tr.retry_call(
            unavailable, tr.RetryPolicy(attempts=4, initial_backoff_s=0), sleep=sleeps.append
        )
    assert count == 4 and len(sleeps) == 3

    count = 0

    def invalid() -> None:
        nonlocal count
        count += 1
        raise InvalidInput(1, "Upload", "INVALID_ARGUMENT", "bad")

    with pytest.raises(InvalidInput):
        tr.retry_call(invalid, tr.RetryPolicy(attempts=4), sleep=sleeps.append)
    assert count == 1


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError, match="attempts"):
        tr.RetryPolicy(attempts=0)


def test_token_is_checked_and_never_shown() -> None:
    t = tr.Transport(cluster(), token="s3cr3t-token")
    assert "s3cr3t" not in repr(t)
    assert repr(t._secrets) == "<redacted>"
    assert t._call_options()["metadata"] == (("authorization", "Bearer s3cr3t-token"),)
    with pytest.raises(TypeError):
        pickle.dumps(t._secrets)
    for bad in ("", "has space", "new\nline"):
        with pytest.raises(ConfigError) as err:
            tr.Transport(cluster(), token=bad)
        assert bad not in str(err.value) or bad == ""
    assert tr.Transport(cluster())._call_options()["metadata"] == ()


def test_channel_options_and_tls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_secure(address: str, creds: Any, options: Any) -> Any:
        seen.update(address=address, options=dict(options), kind="secure")
        return grpc.insecure_channel(address)

    def fake_creds(**kw: Any) -> str:
        seen["creds"] = kw
        return "creds"

    monkeypatch.setattr(grpc, "secure_channel", fake_secure)
    monkeypatch.setattr(grpc, "ssl_channel_credentials", fake_creds)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"CA")
    c = cluster(tls=TlsConfig(ca=ca), limits=Limits(max_message_bytes=3 << 20))
    with tr.Transport(c) as t:
        t._stub(1)
    assert seen["address"] == "127.0.0.1:50052"
    assert seen["options"]["grpc.max_send_message_length"] == 3 << 20
    assert seen["options"]["grpc.max_receive_message_length"] == 3 << 20
    assert seen["creds"] == {"root_certificates": b"CA"}
    with pytest.raises(ConfigError, match="cannot read cluster CA"):
        tr.Transport(cluster(tls=TlsConfig(ca=tmp_path / "missing.pem")))


def test_port_zero_is_looked_up_again_in_the_cluster_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(party_toml(0, "127.0.0.1:0") + party_toml(1, "127.0.0.1:1"))
    t = tr.Transport(path)
    with pytest.raises(Unavailable, match="port 0"):
        t._address(0)
    path.write_text(party_toml(0, "127.0.0.1:43210") + party_toml(1, "127.0.0.1:1"))
    assert t._address(0) == "127.0.0.1:43210"


def test_missing_cluster_file_is_a_client_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster file"):
        tr.Transport(tmp_path / "nope.toml")
