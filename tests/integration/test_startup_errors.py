"""Every start-up error of ``mpcagg server`` is one line that names the file or the
address and says what to do (exit 2, no traceback); ``--engine`` and ``--log-level``
are choices in ``--help``; ``mpcagg --version``."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from mpcagg.ops.credentials import provision_dev
from mpcagg.ops.pki import issue_party_cert, load_key_pair, write_key_pair
from mpcagg.protocol.version import package_version
from tests.integration.procs import cluster_toml, error_line, run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    creds = provision_dev(tmp_path / "certs", 2, hosts=("127.0.0.1",))
    return {
        "dir": tmp_path,
        "ca": creds.ca_cert,
        "ca_key": creds.ca_key,
        "cert0": creds.parties[0].cert,
        "key0": creds.parties[0].key,
        "cert1": creds.parties[1].cert,
        "key1": creds.parties[1].key,
    }


def _write(s: dict[str, Path], *, cert: Path, key: Path, extra: str = "", port: int = 0) -> Path:
    parties = [
        {
            "id": 0,
            "address": f"127.0.0.1:{port}",
            "peer_address": "127.0.0.1:0",
            "data_dir": s["dir"] / "p0",
            "cert": cert,
            "key": key,
        },
        {"id": 1, "address": "127.0.0.1:1", "peer_address": "127.0.0.1:2"},
    ]
    path = s["dir"] / "cluster.toml"
    path.write_text(cluster_toml(parties, ca=s["ca"], extra=extra))
    return path


def _start(path: Path, *args: str) -> str:
    result = run_cli("server", "--config", str(path), "--party", "0", *args, timeout=20)
    assert result.returncode == 2, result.stdout + result.stderr
    return error_line(result.stderr)


def test_certificate_of_another_party_is_refused(setup: dict[str, Path]) -> None:
    path = _write(setup, cert=setup["cert1"], key=setup["key1"])
    line = _start(path)
    assert str(setup["cert1"]) in line and "is party 1's, not party 0's" in line
    assert "mpcagg certs party --party 0" in line


def test_key_of_another_certificate_is_refused(setup: dict[str, Path]) -> None:
    path = _write(setup, cert=setup["cert0"], key=setup["key1"])
    line = _start(path)
    assert f"private key {setup['key1']} is not the key of certificate {setup['cert0']}" in line


def test_certificate_of_another_ca_is_refused(setup: dict[str, Path]) -> None:
    other = provision_dev(setup["dir"] / "other", 1, hosts=("127.0.0.1",))
    path = _write(setup, cert=other.parties[0].cert, key=other.parties[0].key)
    assert "is not issued by the cluster CA" in _start(path)


def test_certificate_naming_no_party_is_refused(setup: dict[str, Path]) -> None:
    collector = setup["dir"] / "certs" / "collector.pem"
    path = _write(setup, cert=collector, key=setup["dir"] / "certs" / "collector-key.pem")
    assert f"certificate {collector} names no party" in _start(path)


def test_certificate_for_this_party_from_the_ca_starts(setup: dict[str, Path]) -> None:
    """The guard is specific: a fresh party-0 certificate of the same CA passes the checks
    (the server then stops at the next problem we planted: a port in use)."""
    ca = load_key_pair(setup["ca"], setup["ca_key"])
    fresh = setup["dir"] / "fresh.pem", setup["dir"] / "fresh-key.pem"
    write_key_pair(issue_party_cert(ca, 0, ["127.0.0.1"]), *fresh)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        path = _write(setup, cert=fresh[0], key=fresh[1], port=held.getsockname()[1])
        line = _start(path)
    assert "the port is in use" in line and "(listen_address)" in line


def test_missing_files(setup: dict[str, Path]) -> None:
    missing = setup["dir"] / "nope.pem"
    path = _write(setup, cert=missing, key=setup["key0"])
    line = _start(path)
    assert f"cannot read certificate {missing}: No such file or directory" in line
    assert "`cert` for party 0" in line
    gone = setup["dir"] / "gone.toml"
    assert f"cannot read cluster file {gone}" in _start(gone)
    shutil.move(setup["ca"], setup["dir"] / "moved-ca.pem")
    path = _write(setup, cert=setup["cert0"], key=setup["key0"])
    assert f"cannot read cluster CA {setup['ca']}" in _start(path)


def test_unknown_toml_key_and_bad_toml(setup: dict[str, Path]) -> None:
    path = _write(
        setup, cert=setup["cert0"], key=setup["key0"], extra="[retention]\nkeep_weeks = 3"
    )
    line = _start(path)
    assert "retention.keep_weeks: unknown key" in line and str(path) in line
    path.write_text("name = [unclosed\n")
    assert "is not valid TOML" in _start(path)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        (
            "--engine",
            "torch",
            "Invalid value for '--engine': 'torch' is not one of 'numpy', 'crypten'",
        ),
        ("--log-level", "LOUD", "Invalid value for '--log-level'"),
        ("--log-format", "xml", "Invalid value for '--log-format'"),
        ("--metrics-address", "nowhere", "--metrics-address must be host:port"),
    ],
)
def test_bad_options(setup: dict[str, Path], flag: str, value: str, expected: str) -> None:
    path = _write(setup, cert=setup["cert0"], key=setup["key0"])
    assert expected in _start(path, flag, value)


def test_metrics_address_in_use(setup: dict[str, Path]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        path = _write(setup, cert=setup["cert0"], key=setup["key0"])
        line = _start(path, "--metrics-address", address)
    assert f"cannot serve metrics on {address}" in line


def test_help_lists_the_choices() -> None:
    result = run_cli("server", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "[numpy|crypten]" in result.stdout
    assert "[debug|info|warning|error]" in result.stdout.lower()
    assert "[auto|text|json]" in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"mpcagg {package_version()} (peer protocol 1, store schema")
