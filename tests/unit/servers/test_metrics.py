"""Prometheus metrics (at least ten families, no client ids in labels), structured logs,
and the versions a party announces and checks."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mpcagg.protocol.version import PROTOCOL_VERSION, incompatibility, package_version
from mpcagg.servers import logs
from mpcagg.servers.metrics import PartyCollector, _ProcessWide, record_refusal, scrape_text
from mpcagg.servers.operations import banner
from mpcagg.servers.schema import SCHEMA_VERSION
from tests.unit.servers.party_rig import Parties, parties

FAMILIES = {
    "mpcagg_build_info",
    "mpcagg_rounds",
    "mpcagg_uploads",
    "mpcagg_refusals",
    "mpcagg_ingested_bytes",
    "mpcagg_uploads_in_flight",
    "mpcagg_close_seconds",
    "mpcagg_commit_seconds",
    "mpcagg_peer_up",
    "mpcagg_data_dir_bytes",
    "mpcagg_oldest_open_round_age_seconds",
    "mpcagg_rounds_pruned",
    "mpcagg_audit_records",
}


class Probe:
    up = {1: True, 2: False}


@pytest.fixture
def rig(tmp_path: Path) -> Parties:
    r = parties(tmp_path)
    yield r  # type: ignore[misc]
    r.close_all()


def _scrape(rig: Parties) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    agg = rig.aggs[0]
    registry = CollectorRegistry()
    registry.register(_ProcessWide())
    registry.register(
        PartyCollector(agg.rounds, lambda _: rig.clock[0] - 30, agg.storage.data_dir, Probe())  # type: ignore[arg-type]
    )
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(scrape_text(registry)):
        for sample in family.samples:
            out.setdefault(family.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _delta(after: dict, before: dict, family: str, *labels: tuple[str, str]) -> float:  # type: ignore[type-arg]
    """How much the samples of ``family`` that carry all of ``labels`` grew."""

    def total(m: dict) -> float:  # type: ignore[type-arg]
        return sum(v for k, v in m.get(family, {}).items() if set(labels) <= set(k))

    return total(after) - total(before)


def test_the_families_and_their_values(rig: Parties) -> None:
    before = _scrape(rig)
    spec = rig.open("m1")
    for client in ("client-alpha", "client-beta"):
        rig.upload(spec, client, 1)
    rig.upload(spec, "client-alpha", 1, to={0})  # an identical retry: a duplicate
    assert rig.leader is not None
    rig.leader.close("m1")
    rig.open("m2")  # stays OPEN
    record_refusal("PERMISSION_DENIED", "Upload", "m1", "trainer client-gamma")
    record_refusal("weird code", "SomethingElse", "m1", "x")
    m = _scrape(rig)
    assert set(m) >= FAMILIES, sorted(FAMILIES - set(m))
    assert len([f for f in m if f.startswith("mpcagg_")]) >= 10
    (labels,) = m["mpcagg_build_info"]
    assert dict(labels) == {
        "version": package_version(),
        "protocol": str(PROTOCOL_VERSION),
        "schema": str(SCHEMA_VERSION),
    }
    assert m["mpcagg_rounds"][(("state", "COMMITTED"),)] == 1
    assert m["mpcagg_rounds"][(("state", "OPEN"),)] == 1
    assert _delta(m, before, "mpcagg_uploads", ("outcome", "stored"), ("share_kind", "seed")) == 4
    assert _delta(m, before, "mpcagg_uploads", ("outcome", "stored"), ("share_kind", "full")) == 2
    assert _delta(m, before, "mpcagg_uploads", ("outcome", "duplicate")) == 1
    assert (
        _delta(m, before, "mpcagg_refusals", ("code", "PERMISSION_DENIED"), ("method", "Upload"))
        == 1
    )
    assert _delta(m, before, "mpcagg_refusals", ("code", "UNKNOWN"), ("method", "other")) == 1
    # The counters are the process's: here all three in-process parties count.
    assert _delta(m, before, "mpcagg_audit_records", ("state", "COMMITTED")) == 3
    assert m["mpcagg_peer_up"] == {(("peer", "1"),): 1.0, (("peer", "2"),): 0.0}
    assert m["mpcagg_oldest_open_round_age_seconds"][()] == pytest.approx(30, abs=1)
    assert m["mpcagg_data_dir_bytes"][()] > 0
    assert _delta(m, before, "mpcagg_ingested_bytes") == 4 * 32 + 2 * 8 * 8  # seeds, full
    assert _delta(m, before, "mpcagg_commit_seconds", ("le", "+Inf")) == 3
    assert _delta(m, before, "mpcagg_close_seconds", ("le", "+Inf")) == 3


def test_no_client_or_round_id_is_a_label_value(rig: Parties) -> None:
    spec = rig.open("secret-round-name")
    rig.upload(spec, "client-alpha", 1)
    record_refusal("PERMISSION_DENIED", "Upload", "secret-round-name", "trainer client-alpha")
    values = {v for samples in _scrape(rig).values() for labels in samples for _, v in labels}
    assert not {v for v in values if "client-" in v or "secret-round" in v}, values


def _format(fmt: str, message: str, *args: object, **extra: object) -> str:
    stream = io.StringIO()
    logs.configure("INFO", fmt)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("mpcagg.test").info(message, *args, extra=extra)
    return stream.getvalue()


def test_json_logs_are_one_object_per_line_and_redacted() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"
    line = _format("json", "refused %s with %s", "Upload", pem, code="PERMISSION_DENIED")
    record = json.loads(line)
    assert record["level"] == "INFO" and record["logger"] == "mpcagg.test"
    assert record["message"] == "refused Upload with <redacted>"
    assert record["code"] == "PERMISSION_DENIED" and record["time"].endswith("+00:00")
    assert "PRIVATE KEY" not in line and len(line.strip().splitlines()) == 1
    text = _format("text", "hello %s", "world")
    assert text.rstrip().endswith("INFO mpcagg.test: hello world")
    with pytest.raises(ValueError, match="log format"):
        logs.configure("INFO", "xml")


def test_auto_is_text_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    logs.configure("INFO", "auto")
    assert not isinstance(logging.getLogger().handlers[0].formatter, logs.JsonFormatter)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    logs.configure("INFO", "auto")
    assert isinstance(logging.getLogger().handlers[0].formatter, logs.JsonFormatter)


def test_versions_in_the_first_log_line_and_the_compatibility_rule() -> None:
    assert banner(2) == (
        f"mpcagg {package_version()} party 2 starting (peer protocol {PROTOCOL_VERSION}, "
        f"store schema {SCHEMA_VERSION})"
    )
    assert incompatibility(None, "party 0") is None  # before versions: protocol 1
    assert incompatibility(str(PROTOCOL_VERSION), "party 0") is None
    problem = incompatibility("2", "the calling party")
    assert problem is not None and "speaks mpcagg peer protocol '2'" in problem
    assert incompatibility("garbage", "x") is not None
