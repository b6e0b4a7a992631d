"""deploy/kubernetes: each party's overlay rendered, schema-validated and checked.

Rendering uses tests/deploy/kustomize.py (no kustomize binary in CI); where kubectl
is installed its built-in kustomize must render the same objects. Every object is
validated offline, in strict mode (unknown fields rejected), with the schemas the
kubernetes-validate package ships.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from mpcagg.protocol.cluster import parse_cluster
from tests.deploy.common import CLIENT_PORT, DEPLOY, N_PARTIES, PEER_PORT, host_port, run, tool
from tests.deploy.kustomize import render

K8S = DEPLOY / "kubernetes"
# The oldest and the newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.31.0", "1.37.0")
SERVER_LABELS = {"app.kubernetes.io/name": "mpcagg", "app.kubernetes.io/component": "server"}
# Files each overlay's secretGenerator reads (never committed): dummies for rendering.
SECRET_FILES = ("party.pem", "party-key.pem", "ca.pem")

Obj = dict[str, Any]


def namespace_of(party: int) -> str:
    return f"mpcagg-party-{party}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with placeholder secret files in every overlay."""
    root = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, root)
    for party in range(N_PARTIES):
        for name in SECRET_FILES:
            path = root / "overlays" / f"party-{party}" / "secrets" / name
            path.write_text(
                f"-----BEGIN PLACEHOLDER-----\n{name} {party}\n-----END PLACEHOLDER-----\n"
            )
    return root


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[int, list[Obj]]:
    return {p: render(tree / "overlays" / f"party-{p}") for p in range(N_PARTIES)}


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: list[Obj]) -> Obj:
    (c,) = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return c


def test_one_overlay_per_party() -> None:
    overlays = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    assert overlays == [f"party-{i}" for i in range(N_PARTIES)]
    for i in range(N_PARTIES):
        ignore = (K8S / "overlays" / f"party-{i}" / "secrets" / ".gitignore").read_text().split()
        assert "*" in ignore, f"overlays/party-{i}/secrets must ignore the keys put there"


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_renderer_agrees_with_kubectl_kustomize(tree: Path, party: int) -> None:
    kubectl = tool("kubectl")
    result = run([kubectl, "kustomize", str(tree / "overlays" / f"party-{party}")])
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip("this kubectl has no built-in kustomize")
    assert result.returncode == 0, result.stderr
    theirs = [d for d in yaml.safe_load_all(result.stdout) if d]
    mine = render(tree / "overlays" / f"party-{party}")

    def key(o: Obj) -> tuple[str, str, str]:
        return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]

    def decoded(o: Obj) -> Obj:
        # kubectl wraps long base64 lines; compare what the Secret holds.
        if o["kind"] == "Secret":
            data = {k: base64.b64decode("".join(v.split())) for k, v in o["data"].items()}
            return {**o, "data": data}
        return o

    assert sorted(map(decoded, mine), key=key) == sorted(map(decoded, theirs), key=key)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("party", range(N_PARTIES))
def test_every_object_validates_strictly(
    rendered: dict[int, list[Obj]], party: int, version: str
) -> None:
    assert version in all_versions(), f"no schemas for Kubernetes {version}"
    kinds = set()
    for obj in rendered[party]:
        kubernetes_validate.validate(obj, version, strict=True)
        kinds.add(obj["kind"])
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "NetworkPolicy",
    }


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_everything_lives_in_the_party_namespace(
    rendered: dict[int, list[Obj]], party: int
) -> None:
    ns = one(rendered[party], "Namespace")
    assert ns["metadata"]["name"] == namespace_of(party)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered[party]:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace_of(party), obj["metadata"]


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_statefulset_runs_this_party_with_its_own_volume(
    rendered: dict[int, list[Obj]], party: int
) -> None:
    sts = one(rendered[party], "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    assert labels["mpcagg.io/party"] == str(party)
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    c = container(rendered[party])
    args = c["args"]
    assert args[0] == "server" and args[args.index("--party") + 1] == str(party)
    assert "--insecure" not in args
    assert {e["name"]: e.get("value") for e in c["env"]}["MPCAGG_PARTY"] == str(party)
    # The data directory is a PersistentVolumeClaim from volumeClaimTemplates.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]]["mountPath"] == "/var/lib/mpcagg"
    assert claim["metadata"]["name"] not in {v["name"] for v in pod["spec"]["volumes"]}
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30, "shorter than the 30 s drain"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"client": CLIENT_PORT, "peer": PEER_PORT}


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_probes_exec_mpcagg_health_for_this_party(
    rendered: dict[int, list[Obj]], party: int
) -> None:
    c = container(rendered[party])
    config = c["args"][c["args"].index("--config") + 1]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:2] == ["mpcagg", "health"], f"{probe}: {command}"
        assert command[command.index("--party") + 1] == str(party), f"{probe}: {command}"
        assert command[command.index("--config") + 1] == config
        assert c[probe]["timeoutSeconds"] >= 1 and c[probe]["periodSeconds"] >= 1


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_resources_and_security_context(rendered: dict[int, list[Obj]], party: int) -> None:
    pod = one(rendered[party], "StatefulSet")["spec"]["template"]["spec"]
    c = container(rendered[party])
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][bound]), f"no cpu/memory {bound}"
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["fsGroup"] == psc["runAsGroup"], "the data volume must belong to the server"
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # With a read-only root, /tmp must be a volume.
    assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_cluster_file_secrets_and_mounts_agree(rendered: dict[int, list[Obj]], party: int) -> None:
    objects = rendered[party]
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    c = container(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    # mountPath/key -> source of every file the container sees from a ConfigMap or Secret
    files: dict[str, tuple[str, str, str]] = {}
    for m in c["volumeMounts"]:
        v = volumes.get(m["name"])
        if v is None or not ({"configMap", "secret"} & set(v)):
            continue
        assert m.get("readOnly") is True, f"{m['name']} must be mounted read-only"
        kind = "ConfigMap" if "configMap" in v else "Secret"
        name = v["configMap"]["name"] if kind == "ConfigMap" else v["secret"]["secretName"]
        source = one(objects, kind, name)
        for key in source["data"]:
            if "subPath" in m:
                if m["subPath"] == key:
                    files[m["mountPath"]] = (kind, name, key)
            else:
                files[f"{m['mountPath']}/{key}"] = (kind, name, key)
    config_path = c["args"][c["args"].index("--config") + 1]
    kind, name, key = files[config_path]
    assert kind == "ConfigMap"
    cluster = parse_cluster(
        one(objects, kind, name)["data"][key], Path(config_path).parent, Path(config_path)
    )
    assert cluster.n_parties == N_PARTIES and cluster.tls is not None
    me = cluster.party(party)
    assert me.cert is not None and me.key is not None and me.data_dir is not None
    assert files[str(me.cert)][:2] == files[str(me.key)][:2] == ("Secret", "mpcagg-party-tls")
    assert one(objects, "Secret", "mpcagg-party-tls")["type"] == "kubernetes.io/tls"
    assert files[str(cluster.tls.ca)][0] == "Secret"
    tls_volume = next(
        v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "mpcagg-party-tls"
    )
    assert tls_volume["secret"]["defaultMode"] & 0o007 == 0, "the key must not be world-readable"
    assert Path("/var/lib/mpcagg") in me.data_dir.parents
    # The addresses: this pod's stable name through the headless peer Service.
    sts = one(objects, "StatefulSet")
    fqdn = (
        f"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}."
        f"{namespace_of(party)}.svc.cluster.local"
    )
    assert host_port(me.address) == (fqdn, CLIENT_PORT)
    assert me.peer_address is not None and host_port(me.peer_address) == (fqdn, PEER_PORT)
    for other in range(N_PARTIES):
        assert namespace_of(other) in cluster.party(other).address


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_services_for_client_and_peer_ports(rendered: dict[int, list[Obj]], party: int) -> None:
    objects = rendered[party]
    sts = one(objects, "StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    client = one(objects, "Service", "mpcagg")
    peer = one(objects, "Service", sts["spec"]["serviceName"])
    for svc in (client, peer):
        assert svc["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in client["spec"]["ports"]] == [
        (CLIENT_PORT, "client")
    ]
    assert [(p["port"], p["targetPort"]) for p in peer["spec"]["ports"]] == [(PEER_PORT, "peer")]
    assert peer["spec"]["clusterIP"] == "None", "the peer Service must be headless"
    assert peer["spec"]["publishNotReadyAddresses"] is True, (
        "the server binds its own DNS name before it is ready"
    )


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_network_policy_admits_peers_only_from_the_other_parties(
    rendered: dict[int, list[Obj]], party: int
) -> None:
    objects = rendered[party]
    policy = one(objects, "NetworkPolicy")
    spec = policy["spec"]
    pod_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in spec["policyTypes"]
    peer_sources: list[tuple[str, str]] = []
    client_open = False
    for rule in spec["ingress"]:
        ports = rule.get("ports")
        assert ports, "an ingress rule without ports admits every port"
        numbers = {p["port"] for p in ports}
        assert numbers <= {CLIENT_PORT, PEER_PORT, "client", "peer"}, numbers
        if not numbers & {PEER_PORT, "peer"}:
            client_open = client_open or CLIENT_PORT in numbers
            continue
        assert numbers == {PEER_PORT}, "keep the peer port in a rule of its own"
        sources = rule.get("from")
        assert sources, "the peer port is open to everyone"
        for source in sources:
            assert set(source) == {"namespaceSelector", "podSelector"}, (
                f"peer source must name another party's namespace AND pod: {source}"
            )
            ns = source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            pods = source["podSelector"]["matchLabels"]
            assert SERVER_LABELS.items() <= pods.items()
            assert not source["namespaceSelector"].get("matchExpressions")
            assert not source["podSelector"].get("matchExpressions")
            peer_sources.append((ns, pods["mpcagg.io/party"]))
    assert client_open, "the client port must stay reachable"
    expected = [(namespace_of(o), str(o)) for o in range(N_PARTIES) if o != party]
    assert sorted(peer_sources) == expected
