"""deploy/firewall/mpcagg.nft: syntax (``nft -c``), structure, and behaviour.

The behaviour test loads the rules into a private, throwaway network namespace
(``unshare --net``: nothing on the host changes) whose loopback carries the
placeholder addresses, and tries real TCP connections to the peer and client
ports from a listed peer and from an unlisted address. Nothing leaves that
namespace. It is skipped where unshare, ip or nft are missing or not permitted.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from mpcagg.protocol.cluster import load_cluster
from tests.deploy.common import CLIENT_PORT, CLUSTER_FILES, DEPLOY, PEER_PORT, run, tool

RULES = DEPLOY / "firewall" / "mpcagg.nft"


def defines() -> dict[str, str]:
    return dict(re.findall(r"^define (\w+) = (.+?)\s*$", RULES.read_text(), flags=re.M))


def elements(value: str) -> list[str]:
    assert value.startswith("{") and value.endswith("}"), value
    return [e.strip() for e in value[1:-1].split(",") if e.strip()]


def input_rules() -> list[str]:
    text = RULES.read_text()
    body = re.search(r"chain input \{(.*?)\n\t\}", text, flags=re.S)
    assert body, "no input chain"
    return [
        line.strip()
        for line in body.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_nft_accepts_the_file() -> None:
    nft = tool("nft")
    result = run([nft, "-c", "-f", str(RULES)])
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert result.returncode == 0, result.stderr


def test_ports_match_the_deployments() -> None:
    d = defines()
    assert d["MPCAGG_PEER_PORT"] == str(PEER_PORT)
    assert d["MPCAGG_CLIENT_PORT"] == str(CLIENT_PORT)
    cluster = load_cluster(CLUSTER_FILES["systemd"])
    for party in cluster.parties:
        assert party.peer_address is not None
        assert party.peer_address.endswith(f":{PEER_PORT}")
        assert party.address.endswith(f":{CLIENT_PORT}")


def test_peer_sets_hold_placeholders_not_the_world() -> None:
    d = defines()
    v4, v6 = elements(d["MPCAGG_PEERS_V4"]), elements(d["MPCAGG_PEERS_V6"])
    assert len(v4) == len(v6) == 2, "one address per other party (3 parties)"
    for addr in v4:
        assert addr.startswith("192.0.2."), f"{addr}: use documentation placeholders"
    for addr in v6:
        assert addr.lower().startswith("2001:db8:"), f"{addr}: use documentation placeholders"
    text = RULES.read_text()
    for wide in ("0.0.0.0/0", "::/0"):
        assert wide not in text
    assert "PLACEHOLDERS" in text, "say which values the operator must replace"


def test_peer_port_rules_accept_only_the_peer_sets_then_reject() -> None:
    rules = input_rules()
    chain = rules[0]
    assert chain.startswith("type filter hook input") and "policy accept" in chain
    peer = [r for r in rules if "$MPCAGG_PEER_PORT" in r]
    assert peer == [
        "tcp dport $MPCAGG_PEER_PORT ip saddr @peers_v4 accept",
        "tcp dport $MPCAGG_PEER_PORT ip6 saddr @peers_v6 accept",
        "tcp dport $MPCAGG_PEER_PORT counter reject with tcp reset",
    ], peer
    # Nothing before the peer rules accepts everything.
    first = rules.index(peer[0])
    for rule in rules[1:first]:
        assert not re.fullmatch(r"(ct state .*|meta .*)?accept", rule), rule
    text = RULES.read_text()
    # Idempotent: the table is replaced as a whole on each load.
    assert re.search(r"^table inet mpcagg\ndelete table inet mpcagg\n", text, flags=re.M)


NETNS_PROBE = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    rules, peer = sys.argv[1], sys.argv[2]
    peer_port, client_port = int(sys.argv[3]), int(sys.argv[4])
    def sh(*a):
        subprocess.run(a, check=True, capture_output=True)
    sh("ip", "link", "set", "lo", "up")
    me, stranger = "192.0.2.1", "192.0.2.99"  # this host, and an address in no set
    for a in (me, peer, stranger):
        sh("ip", "addr", "add", a + "/32", "dev", "lo")
    sh("nft", "-f", rules)
    listeners = []
    for port in (peer_port, client_port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((me, port))
        s.listen(8)
        listeners.append(s)
    def reach(src, port):
        c = socket.socket()
        c.settimeout(2)
        c.bind((src, 0))
        try:
            c.connect((me, port))
            return True
        except OSError:
            return False
        finally:
            c.close()
    print(json.dumps({
        "peer_from_peer": reach(peer, peer_port),
        "peer_from_stranger": reach(stranger, peer_port),
        "client_from_stranger": reach(stranger, client_port),
    }))
    """
)


def test_rules_admit_listed_peers_only_in_a_private_netns(tmp_path: Path) -> None:
    unshare = tool("unshare")
    tool("ip")
    tool("nft")
    if run([unshare, "--net", "true"]).returncode != 0:
        pytest.skip("unshare --net is not permitted here")
    peer = elements(defines()["MPCAGG_PEERS_V4"])[0]
    assert peer not in ("192.0.2.1", "192.0.2.99")
    script = tmp_path / "probe.py"
    script.write_text(NETNS_PROBE)
    args = [str(script), str(RULES), peer, str(PEER_PORT), str(CLIENT_PORT)]
    result = run([unshare, "--net", sys.executable, *args])
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {
        "peer_from_peer": True,
        "peer_from_stranger": False,
        "client_from_stranger": True,
    }
