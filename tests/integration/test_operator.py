"""``mpcagg rounds list | show | abort | prune`` against a running cluster (the collector's
client certificate) and on a stopped party's data directory, and the audit records
``show`` verifies (hash chain, signatures by each party's TLS key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mpcagg import NotFound, PermissionDenied, RoundNotOpen, RoundState
from mpcagg.clients.admin import AdminClient
from mpcagg.ops.cli import main
from mpcagg.ops.local import LocalCluster
from mpcagg.servers.audit import AUDIT_FILE
from tests.integration.conftest import Rig, eventually, running_cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def ops_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_cluster(tmp_path_factory.mktemp("ops")) as cluster, Rig(cluster) as rig:
        yield rig


def cli(cluster: LocalCluster, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    files = cluster.client_files("collector", "collector")
    assert files is not None
    creds = [
        "--config",
        str(cluster.cluster_file),
        "--cert",
        str(files.cert),
        "--key",
        str(files.key),
    ]
    command, *rest = args
    capsys.readouterr()
    code = main(["rounds", command, *rest, *creds])
    out = capsys.readouterr()
    return code, out.out + out.err


def local(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["rounds", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def committed_round(rig: Rig, round_id: str) -> None:
    """Three trainers through the client, a fourth that reached parties 0 and 1 only."""
    spec = rig.open(round_id, min_clients=2, bound=10.0)
    for k in range(3):
        rig.submit(spec, f"{round_id}-t{k}", {"w": np.full(16, float(k))})
    encoded = spec.fixed_point.encode(np.ones(16), bound=spec.bound)
    rig.upload(
        round_id, f"{round_id}-drop", rig.shares(round_id, f"{round_id}-drop", encoded), [0, 1]
    )
    assert rig.close(round_id).state is RoundState.COMMITTED


def test_list_and_show_a_round_with_a_dropout(
    ops_rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    committed_round(ops_rig, "ops-show")
    code, out = cli(ops_rig.cluster, "list", capsys=capsys)
    assert code == 0, out
    (row,) = [line for line in out.splitlines() if line.startswith("ops-show ")]
    assert row.split()[1:4] == ["COMMITTED", "4/4/3", "3"], row
    code, out = cli(ops_rig.cluster, "show", "ops-show", capsys=capsys)
    assert code == 0, out
    assert "round ops-show: COMMITTED at every party" in out
    assert "cohort    3 clients, digest" in out
    assert out.count("audit     record") == 3 and out.count("chain ok") == 3, out
    assert "w [16] (16 elements)" in out
    for party in range(3):
        assert f"party {party}   COMMITTED" in out


def test_abort_fails_the_round_everywhere(ops_rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    spec = ops_rig.open("ops-abort", min_clients=2)
    ops_rig.submit(spec, "ops-abort-t0", {"w": np.ones(16)})
    code, out = cli(
        ops_rig.cluster, "abort", "ops-abort", "--reason", "trainers gone", capsys=capsys
    )
    assert code == 0, out
    assert "FAILED at the leader (aborted by collector 'collector': trainers gone)" in out
    statuses = eventually(lambda: ops_rig.all_in("ops-abort", RoundState.FAILED), what="FAILED")
    assert all("trainers gone" in s.reason for s in statuses.values())
    for party in range(3):
        assert isinstance(ops_rig.aggregate_share_error(party, "ops-abort"), RoundNotOpen)
        assert ops_rig.spool_files(party, "ops-abort") == []
    code, out = cli(ops_rig.cluster, "show", "ops-abort", capsys=capsys)
    assert code == 0 and out.count("FAILED, aggregate share -") == 3, out


def test_abort_refuses_a_committed_round(ops_rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    committed_round(ops_rig, "ops-done")
    code, out = cli(ops_rig.cluster, "abort", "ops-done", capsys=capsys)
    assert code == 2 and "already COMMITTED" in out, out
    assert ops_rig.all_in("ops-done", RoundState.COMMITTED)


def test_admin_needs_the_collector(ops_rig: Rig) -> None:
    files = ops_rig.cluster.client_files("ops-trainer")
    assert files is not None
    with AdminClient(ops_rig.config, cert=files.cert, key=files.key) as admin:
        with pytest.raises(PermissionDenied):
            admin.list_rounds(0)
        with pytest.raises(PermissionDenied):
            admin.abort_round("ops-show", "")
    collector = ops_rig.cluster.client_kwargs("collector", "collector")
    with AdminClient(ops_rig.config, **collector) as admin, pytest.raises(NotFound):
        admin.show_round(1, "no-such-round")


def test_prune_applies_the_retention_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    retention = {"keep_rounds": 1, "keep_days": 0, "interval_s": 3600}
    with running_cluster(tmp_path, 2, retention=retention) as cluster, Rig(cluster) as rig:
        for k in range(3):
            spec = rig.open(f"keep-{k}", min_clients=1)
            rig.submit(spec, f"keep-{k}-t", {"w": np.ones(16)})
            assert rig.close(f"keep-{k}").state is RoundState.COMMITTED
        code, out = cli(cluster, "prune", "--dry-run", capsys=capsys)
        assert code == 0, out
        assert out.count("would prune keep-") == 4 and "keep-2" not in out, out
        assert rig.all_in("keep-0", RoundState.COMMITTED), "a dry run changed something"
        code, out = cli(cluster, "prune", capsys=capsys)
        assert code == 0 and out.count("pruned keep-") == 4, out
        for p in range(2):
            assert not (cluster.directory / f"party-{p}" / "spool" / "keep-0").exists()
            with pytest.raises(NotFound):
                rig.collector_wire.get_round(p, "keep-1")
        code, out = cli(cluster, "list", capsys=capsys)
        assert "keep-2" in out and "keep-0" not in out and "keep-1" not in out, out
        code, out = cli(cluster, "show", "keep-2", capsys=capsys)
        assert code == 0 and out.count("chain ok (3 records") == 2, out  # records stay


def test_inspect_a_stopped_party_and_detect_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_cluster(tmp_path, 3) as cluster, Rig(cluster) as rig:
        committed_round(rig, "tamper-a")
        committed_round(rig, "tamper-b")
        cluster_file = cluster.cluster_file
    data = tmp_path / "party-1"
    code, out = local("list", "--data-dir", str(data), capsys=capsys)
    assert code == 0 and "tamper-a" in out and "tamper-b" in out, out
    code, out = local(
        "show", "tamper-a", "--data-dir", str(data), "--config", str(cluster_file), capsys=capsys
    )
    assert code == 0 and "chain ok (2 records, 2 signatures valid)" in out, out

    log = data / AUDIT_FILE
    original = log.read_bytes()
    first, second = original.splitlines()
    record = json.loads(first)
    record["cohort_size"] = 2  # a party rewriting history
    edited = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    log.write_bytes(edited + b"\n" + second + b"\n")
    code, out = local(
        "show", "tamper-a", "--data-dir", str(data), "--config", str(cluster_file), capsys=capsys
    )
    assert code == 1, out
    assert "CHAIN BROKEN" in out and "signature does not match" in out, out
    assert "record 2 (round 'tamper-b'): does not link" in out, out

    log.write_bytes(second + b"\n")  # a record dropped
    code, out = local("show", "tamper-b", "--data-dir", str(data), capsys=capsys)
    assert code == 1 and "does not link" in out, out

    log.write_bytes(original)
    code, out = local("show", "tamper-b", "--data-dir", str(data), capsys=capsys)
    assert code == 0, out
