"""Three parties on three "hosts": Linux network namespaces with their own addresses.

The test (as root) builds a bridge in a namespace of its own and joins to it, by veth
pairs, one namespace per party (10.231.7.1-3) and one for the collector and the
trainers (10.231.7.100). Each party certificate names only its own address; each
server binds its client port on all interfaces and its peer port on its address
(``listen_address`` / ``peer_listen_address``) and advertises its address. Then:

1. the trainers' namespace reaches a party's peer port (TCP), until the rules of
   ``deploy/firewall/mpcagg.nft`` (the other parties' addresses filled in) are loaded
   into every party's namespace: from then on it is refused, the client port is not,
   and the parties still reach each other's peer ports;
2. a full round with a dropout (a trainer that reached parties 0 and 1 only) commits
   with the other three trainers as its cohort, and the revealed ring sum is exact.

Nothing outside the namespaces changes; every command has a timeout; the namespaces
are deleted at the end. Skipped, with the reason, where namespaces cannot be created
(not root, no ``ip``, no permission); the firewall part needs ``nft``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpcagg.ops.credentials import provision_client, provision_dev
from mpcagg.ops.pki import issue_party_cert, load_key_pair, write_key_pair
from tests.deploy.common import CLIENT_PORT, DEPLOY, PEER_PORT

pytestmark = pytest.mark.timeout(240)

NET = "10.231.7"
PARTY_IPS = [f"{NET}.{i + 1}" for i in range(3)]
CLIENT_IP = f"{NET}.100"
TAG = f"m{os.getpid() % 100000}"
NAMESPACES = {**{f"p{i}": f"{TAG}p{i}" for i in range(3)}, "cl": f"{TAG}cl", "br": f"{TAG}br"}


def sh(
    *args: str, ns: str | None = None, timeout: float = 20, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {result.stderr or result.stdout}")
    return result


def _cannot_create() -> str | None:
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"{TAG}probe"
    result = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10
    )
    if result.returncode != 0:
        return f"ip netns add is not permitted here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, str]]:
    reason = _cannot_create()
    if reason is not None:
        print(f"SKIPPED separate-hosts test: {reason}")
        pytest.skip(reason)
    try:
        for ns in NAMESPACES.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        br = NAMESPACES["br"]
        sh("ip", "link", "add", "br0", "type", "bridge", ns=br)
        sh("ip", "link", "set", "br0", "up", ns=br)
        for name, ip in [*zip(("p0", "p1", "p2"), PARTY_IPS, strict=True), ("cl", CLIENT_IP)]:
            ns = NAMESPACES[name]
            inner, outer = f"v{name}", f"{TAG[-5:]}{name}"
            sh(
                "ip",
                "link",
                "add",
                inner,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                outer,
                "netns",
                br,
            )
            sh("ip", "link", "set", outer, "master", "br0", "up", ns=br)
            sh("ip", "addr", "add", f"{ip}/24", "dev", inner, ns=ns)
            sh("ip", "link", "set", inner, "up", ns=ns)
        yield NAMESPACES
    finally:
        for ns in NAMESPACES.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _credentials(root: Path) -> Path:
    ca_dir = root / "ca"
    provision_dev(ca_dir, 1, hosts=(PARTY_IPS[0],))  # the CA, party 0 (its address only)
    ca = load_key_pair(ca_dir / "ca.pem", ca_dir / "ca-key.pem")
    for i in (1, 2):
        write_key_pair(
            issue_party_cert(ca, i, [PARTY_IPS[i]]),
            ca_dir / f"party-{i}.pem",
            ca_dir / f"party-{i}-key.pem",
        )
    for k in range(4):
        provision_client(ca_dir, f"t{k}", "trainer")
    return ca_dir


def _cluster_file(root: Path, ca_dir: Path) -> Path:
    lines = [
        'name = "netns"',
        "",
        "[tls]",
        f'ca = "{ca_dir / "ca.pem"}"',
        "",
        "[limits]",
        "rpc_timeout_s = 10.0",
        "drain_timeout_s = 2.0",
        "",
    ]
    for i, ip in enumerate(PARTY_IPS):
        lines += [
            "[[parties]]",
            f"id = {i}",
            f'address = "{ip}:{CLIENT_PORT}"',
            f'peer_address = "{ip}:{PEER_PORT}"',
            f'listen_address = "0.0.0.0:{CLIENT_PORT}"',
            f'peer_listen_address = "{ip}:{PEER_PORT}"',
            f'data_dir = "{root / f"data-{i}"}"',
            f'cert = "{ca_dir / f"party-{i}.pem"}"',
            f'key = "{ca_dir / f"party-{i}-key.pem"}"',
            "",
        ]
    path = root / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


def _firewall(root: Path, party: int) -> Path:
    """deploy/firewall/mpcagg.nft with the other parties' addresses, as README says."""
    others = ", ".join(ip for i, ip in enumerate(PARTY_IPS) if i != party)
    text = (DEPLOY / "firewall" / "mpcagg.nft").read_text()
    text, n = re.subn(
        r"^define MPCAGG_PEERS_V4 = \{.*\}$",
        f"define MPCAGG_PEERS_V4 = {{ {others} }}",
        text,
        flags=re.M,
    )
    assert n == 1
    path = root / f"mpcagg-{party}.nft"
    path.write_text(text)
    return path


PROBE = textwrap.dedent(
    """
    import json, socket, sys
    out = {}
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            out[target] = True
        except OSError:
            out[target] = False
    print(json.dumps(out))
    """
)

ROUND = textwrap.dedent(
    """
    import json, secrets, sys
    import numpy as np
    from mpcagg import Collector, SecureAggregator, TensorLayout
    from mpcagg.clients.transport import Transport
    from mpcagg.mpc import Seed, SharingContext, full_party_for, share
    from mpcagg.mpc.ring import DTYPE
    from mpcagg.wire import framing

    config, creds = sys.argv[1], sys.argv[2]
    cred = lambda stem: {"cert": f"{creds}/{stem}.pem", "key": f"{creds}/{stem}-key.pem"}
    rng = np.random.default_rng(3)
    with Collector(config, **cred("collector")) as collector:
        spec = collector.open_round("netns-1", TensorLayout.from_shapes([("w", (64,))]),
                                    min_clients=2, bound=100.0, deadline_s=120)
        expected = np.zeros(64, dtype=DTYPE)
        for k in range(3):
            x = rng.integers(-800, 800, 64) / 8.0
            np.add(expected, spec.fixed_point.encode(x, bound=spec.bound), out=expected)
            with SecureAggregator(config, f"t{k}", **cred(f"trainer-t{k}"), progress=False) as t:
                t.submit(spec, {"w": x})
        # t3 drops out: its shares reach parties 0 and 1 only.
        encoded = spec.fixed_point.encode(np.ones(64), bound=spec.bound)
        parts = share(encoded, 3, full_party_for("t3", 3), [Seed.generate() for _ in range(2)],
                      SharingContext("netns-1", "t3"))
        sid = secrets.token_bytes(16)
        with Transport(config, **cred("trainer-t3")) as wire:
            for p in (0, 1):
                up = framing.PartyUpload.from_share(parts[p])
                wire.upload(p, framing.upload_messages(up, round_id="netns-1", client_id="t3",
                            sharing_id=sid, chunk_bytes=1 << 20, spec_digest=spec.digest))
        status = collector.close("netns-1", wait_s=60)
        ring, cohort = collector.aggregate_ring("netns-1")
        result = collector.result("netns-1", spec)
        print(json.dumps({"state": status.state.value, "cohort": cohort,
                          "exact": bool((ring == expected).all()),
                          "mean0": float(result.mean["w"][0])}))
    """
)


def _reach(ns: str, *targets: str) -> dict[str, bool]:
    out = sh(sys.executable, "-c", PROBE, *targets, ns=ns, timeout=30)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_three_hosts_a_round_with_a_dropout_and_the_firewall(
    hosts: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path
    ca_dir = _credentials(root)
    cluster = _cluster_file(root, ca_dir)
    procs = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for i in range(3):
            log = open(root / f"party-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            server = ["server", "--config", str(cluster), "--party", str(i), "--log-format", "text"]
            cmd = ["ip", "netns", "exec", hosts[f"p{i}"], sys.executable, "-m", "mpcagg.ops.cli"]
            cmd += server
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()
        for i in range(3):
            probe = ["health", "--config", str(cluster), "--party", str(i), "--wait", "40"]
            health = sh(
                sys.executable,
                "-m",
                "mpcagg.ops.cli",
                *probe,
                ns=hosts[f"p{i}"],
                timeout=60,
                check=False,
            )
            assert health.returncode == 0, (
                health.stdout + (root / f"party-{i}.log").read_text()[-3000:]
            )

        peer0, client0 = f"{PARTY_IPS[0]}:{PEER_PORT}", f"{PARTY_IPS[0]}:{CLIENT_PORT}"
        assert _reach(hosts["cl"], peer0, client0) == {peer0: True, client0: True}
        nft = shutil.which(
            "nft", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        )
        if nft is not None:
            for i in range(3):
                sh(nft, "-f", str(_firewall(root, i)), ns=hosts[f"p{i}"])
            assert _reach(hosts["cl"], peer0, client0) == {peer0: False, client0: True}
            peer1 = f"{PARTY_IPS[1]}:{PEER_PORT}"
            assert _reach(hosts["p0"], peer1) == {peer1: True}
            assert _reach(hosts["p2"], peer0) == {peer0: True}
        else:
            print("nft is not installed: the firewall part of this test did not run")

        script = root / "round.py"
        script.write_text(ROUND)
        started = time.monotonic()
        out = sh(
            sys.executable,
            str(script),
            str(cluster),
            str(ca_dir),
            ns=hosts["cl"],
            timeout=150,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr[-4000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result == {**result, "state": "COMMITTED", "cohort": 3, "exact": True}, result
        assert time.monotonic() - started < 150
        if nft is None:
            pytest.skip("the round ran; nft is not installed, so the firewall was not checked")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
