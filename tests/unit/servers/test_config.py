"""Tests of servers.config: the cluster file is typed, strict, and resolved against itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpcagg.protocol.cluster import ClusterConfig, dump_cluster, load_cluster, parse_cluster
from mpcagg.protocol.errors import ConfigError


def party(i: int, **extra: str) -> str:
    lines = [
        "[[parties]]",
        f"id = {i}",
        f'address = "127.0.0.1:{50051 + i}"',
        f'peer_address = "127.0.0.1:{50061 + i}"',
    ]
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def cluster_text(n: int = 3, head: str = "", **extra: str) -> str:
    return head + "\n" + "".join(party(i, **extra) for i in range(n))


def parse(text: str) -> ClusterConfig:
    return parse_cluster(text, Path("/base"))


def test_minimal_cluster_parses_with_defaults() -> None:
    config = parse(cluster_text(3))
    assert config.n_parties == 3
    assert config.engine == "numpy"
    assert config.tls is None
    assert config.party(1).port == 50052
    assert config.party(1).host == "127.0.0.1"
    assert [p.id for p in config.ordered_parties()] == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (cluster_text(3, head="colour = 'blue'"), "colour: unknown key"),
        (cluster_text(3, head="[limits]\nmax_vector_lenght = 10"), "limits.max_vector_lenght"),
        (cluster_text(3, head="[tls]\nca = 'ca.pem'\ncrl = 'x'"), "tls.crl: unknown key"),
        # Bearer tokens are gone: a stale cluster file says so instead of running without.
        (
            cluster_text(3, head="[tls]\nca = 'ca.pem'\ntoken_public_key = 'token.pem'"),
            "tls.token_public_key: unknown key",
        ),
        (cluster_text(3, port="1"), "parties.0.port: unknown key"),
    ],
)
def test_unknown_key_is_refused_by_name(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(text)
    assert named in str(refused.value)
    assert "unknown key" in str(refused.value)


@pytest.mark.parametrize(
    "address", ["localhost", "127.0.0.1:", ":50051", "127.0.0.1:http", "127.0.0.1:65536"]
)
def test_bad_address_is_refused(address: str) -> None:
    text = cluster_text(2) + party(2).replace('"127.0.0.1:50053"', f'"{address}"')
    with pytest.raises(ConfigError) as refused:
        parse(text)
    message = str(refused.value)
    assert "parties.2.address" in message
    assert f"address must be host:port, got {address!r}" in message


def test_ipv6_and_port_zero_addresses_are_accepted() -> None:
    text = cluster_text(2) + party(2).replace('"127.0.0.1:50053"', '"[::1]:0"')
    config = parse(text)
    assert config.party(2).port == 0
    assert config.party(2).host == "[::1]"


@pytest.mark.parametrize(
    ("ids", "shown"), [([0, 1, 3], "[0, 1, 3]"), ([1, 2, 3], "[1, 2, 3]"), ([0, 1, 1], "[0, 1, 1]")]
)
def test_party_ids_must_be_0_to_n_minus_1(ids: list[int], shown: str) -> None:
    text = "".join(party(i).replace(f"id = {i}", f"id = {pid}") for i, pid in enumerate(ids))
    with pytest.raises(ConfigError) as refused:
        parse(text)
    assert f"party ids must be 0..2, each once; got {shown}" in str(refused.value)


def test_one_party_is_not_a_cluster() -> None:
    with pytest.raises(ConfigError, match="at least 2 parties"):
        parse(party(0))


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match="engine"):
        parse(cluster_text(3, head='engine = "tensorflow"'))


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError, match="chunk_bytes must be a multiple of 8"):
        parse(cluster_text(3, head="[limits]\nchunk_bytes = 1001"))
    with pytest.raises(ConfigError, match=r"limits\.rpc_timeout_s"):
        parse(cluster_text(3, head="[limits]\nrpc_timeout_s = 0"))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"cluster\.toml is not valid TOML"):
        load_cluster(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster file"):
        load_cluster(tmp_path / "absent.toml")


def test_relative_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = conf_dir / "cluster.toml"
    head = '[tls]\nca = "certs/ca.pem"'
    path.write_text(
        cluster_text(3, head=head, data_dir="data/p", cert="certs/p.pem", key="/abs/k.pem")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter

    config = load_cluster(Path("..") / "conf" / "cluster.toml")
    assert config.tls is not None
    assert config.tls.ca == conf_dir.resolve() / "certs" / "ca.pem"
    assert config.party(0).data_dir == conf_dir.resolve() / "data" / "p"
    assert config.party(2).cert == conf_dir.resolve() / "certs" / "p.pem"
    assert config.party(1).key == Path("/abs/k.pem")  # absolute paths stay as they are
    assert config.source == path.resolve()


def test_dump_then_load_gives_the_same_cluster(tmp_path: Path) -> None:
    original = parse_cluster(
        cluster_text(
            3, head='name = "prod"\nengine = "crypten"\n[limits]\nchunk_bytes = 1024', data_dir="d"
        ),
        tmp_path,
    )
    path = tmp_path / "again.toml"
    path.write_text(dump_cluster(original))
    again = load_cluster(path)
    assert again.model_dump(exclude={"source"}) == original.model_dump(exclude={"source"})
