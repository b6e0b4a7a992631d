"""The same training on Flower's deployment runtime: a SuperLink and five SuperNodes as
local processes, the app submitted with ``flwr run``, three mpcagg servers with TLS.

    python examples/flower/deploy.py --rounds 3

Everything listens on 127.0.0.1 (free ports picked at start); telemetry is off and app
dependencies are not installed at run time (they are this environment's: the dev
extra). Each SuperNode names its own mpcagg certificate in its node config, which is
what ``SecureAggregationMod()`` reads; the ServerApp gets the collector's from the run
config. Prints accuracy and time per round as the ServerApp measured them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpcagg.ops.local import LocalCluster

HERE = Path(__file__).resolve().parent
APP = HERE / "app"
TRAINERS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Processes this script started, ended (by pid) in reverse order."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []  # type: ignore[var-annotated]

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(list(args), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="plain FedAvg, no mpcagg")
    args = parser.parse_args()
    bin_dir = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="mpcagg-flower-deploy-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str(work / "flwr-home"),
        }
        link = free_port()
        (work / "flwr-home").mkdir()
        (work / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        procs = Processes(env, work)
        with LocalCluster(work / "cluster", 3, tls=True, log_level="WARNING") as cluster:
            try:
                flower = procs.start(
                    "superlink",
                    f"{bin_dir}/flower-superlink",
                    "--insecure",
                    "--isolation=process",
                    "--disable-runtime-dependency-installation",
                    f"--port={link}",
                )
                wait_for_port(link)
                procs.start(
                    "superexec-serverapp",
                    f"{bin_dir}/flower-superexec",
                    "--insecure",
                    f"--runtime-api-address=127.0.0.1:{link}",
                    f"--parent-pid={flower.pid}",
                )
                for k in range(TRAINERS):
                    files = cluster.client_kwargs(f"trainer-{k}")
                    node_port = free_port()
                    node_config = (
                        f"partition-id={k} num-partitions={TRAINERS} "
                        f"mpcagg-cluster='{cluster.cluster_file}' "
                        f"mpcagg-cert='{files['cert']}' mpcagg-key='{files['key']}'"
                    )
                    node = procs.start(
                        f"supernode-{k}",
                        f"{bin_dir}/flower-supernode",
                        "--insecure",
                        f"--superlink=127.0.0.1:{link}",
                        "--isolation=process",
                        f"--port={node_port}",
                        "--node-config",
                        node_config,
                    )
                    wait_for_port(node_port)
                    procs.start(
                        f"superexec-{k}",
                        f"{bin_dir}/flower-superexec",
                        "--insecure",
                        f"--runtime-api-address=127.0.0.1:{node_port}",
                        f"--parent-pid={node.pid}",
                    )
                collector = cluster.client_kwargs("collector", "collector")
                out = work / "summary.json"
                run_config = (
                    f"num-server-rounds={args.rounds} mpcagg-cluster='{cluster.cluster_file}' "
                    f"collector-cert='{collector['cert']}' collector-key='{collector['key']}' "
                    f"out='{out}' secure={'false' if args.plain else 'true'}"
                )
                started = time.perf_counter()
                done = subprocess.run(
                    [
                        f"{bin_dir}/flwr",
                        "run",
                        str(APP),
                        "local-deploy",
                        "--stream",
                        "-c",
                        run_config,
                    ],
                    env=env,
                    timeout=600,
                    capture_output=True,
                    text=True,
                )
                elapsed = time.perf_counter() - started
                if done.returncode != 0 or not out.exists():
                    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
                    return 1
            finally:
                procs.stop()
        summary = json.loads(out.read_text())
    print(f"\n{'plain FedAvg' if args.plain else 'mpcagg'} on the deployment runtime")
    print("round  accuracy  s/round")
    for r in range(1, args.rounds + 1):
        print(f"{r:5d}  {summary['accuracy'][r]:8.4f}  {summary['seconds'][r - 1]:7.3f}")
    print(f"flwr run took {elapsed:.1f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
