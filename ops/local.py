"""A local cluster of real server processes on 127.0.0.1 (``mpcagg up``, the demo, tests).

Every party binds port 0; once each has written its ports, the cluster file is
rewritten with the real addresses, so clients and restarted servers use them.
With TLS (the default) a development CA and party certificates are provisioned under
``<dir>/certs``, and client certificates for trainers and the collector on demand
(:meth:`LocalCluster.client_files`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict

from mpcagg.ops.credentials import CertFiles, provision_client, provision_dev
from mpcagg.ops.health import check_health
from mpcagg.protocol.cluster import (
    ClusterConfig,
    Limits,
    PartyConfig,
    Retention,
    TlsConfig,
    dump_cluster,
    load_cluster,
)
from mpcagg.protocol.errors import ConfigError
from mpcagg.protocol.files import write_atomic
from mpcagg.protocol.identity import read_pem


class ClientFiles(TypedDict, total=False):
    """``cert=`` and ``key=`` for a trainer or the collector (empty without TLS)."""

    cert: Path
    key: Path


class LocalCluster:
    """``n_parties`` server processes under ``directory``. Use as a context manager."""

    def __init__(
        self,
        directory: Path,
        n_parties: int = 3,
        *,
        tls: bool = True,
        engine: str = "numpy",
        limits: dict[str, Any] | None = None,
        name: str = "local",
        retention: dict[str, Any] | None = None,
        log_level: str = "INFO",
    ) -> None:
        if n_parties < 2:
            raise ConfigError(f"a local cluster needs at least 2 parties, got {n_parties}")
        self.directory = Path(directory).resolve()
        self.n_parties = n_parties
        self.tls = tls
        self.engine = engine
        self.limits = Limits(**(limits or {}))
        self.retention = Retention(**(retention or {}))
        self.name = name
        self.log_level = log_level
        self.cluster_file = self.directory / "cluster.toml"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tls_config = None
        certs: list[tuple[Path, Path]] = [(Path(), Path())] * self.n_parties
        if self.tls:
            creds = provision_dev(self.certs_dir, self.n_parties)
            tls_config = TlsConfig(ca=creds.ca_cert)
            certs = [(c.cert, c.key) for c in creds.parties]
        parties = [
            PartyConfig(
                id=i,
                address="127.0.0.1:0",
                peer_address="127.0.0.1:0",
                data_dir=self.directory / f"party-{i}",
                cert=certs[i][0] if self.tls else None,
                key=certs[i][1] if self.tls else None,
            )
            for i in range(self.n_parties)
        ]
        config = ClusterConfig.model_validate(
            {
                "name": self.name,
                "engine": self.engine,
                "tls": tls_config,
                "limits": self.limits,
                "retention": self.retention,
                "parties": parties,
            }
        )
        write_atomic(self.cluster_file, dump_cluster(config).encode(), 0o644)
        for i in range(self.n_parties):
            self.start_party(i, wait=False)
        deadline = time.monotonic() + timeout
        ports = {i: self._wait_port_file(i, deadline) for i in range(self.n_parties)}
        resolved = config.model_copy(
            update={
                "parties": [
                    p.model_copy(
                        update={
                            "address": f"127.0.0.1:{ports[p.id][0]}",
                            "peer_address": f"127.0.0.1:{ports[p.id][1]}",
                        }
                    )
                    for p in parties
                ]
            }
        )
        write_atomic(self.cluster_file, dump_cluster(resolved).encode(), 0o644)
        for i in range(self.n_parties):
            self.wait_healthy(i, deadline)

    def start_party(self, party: int, *, wait: bool = True, timeout: float = 60.0) -> None:
        """(Re)start one server process on its data directory."""
        port_file = self.directory / f"party-{party}.port"
        port_file.unlink(missing_ok=True)
        log = open(self.directory / f"party-{party}.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [
            sys.executable, "-m", "mpcagg.ops.cli", "server",
            "--config", str(self.cluster_file), "--party", str(party),
            "--port-file", str(port_file), "--log-level", self.log_level, "--log-format", "text",
        ]  # fmt: skip
        if not self.tls:
            cmd.append("--insecure")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._procs[party] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if wait:
            deadline = time.monotonic() + timeout
            self._wait_port_file(party, deadline)
            self.wait_healthy(party, deadline)

    def kill_party(self, party: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        """Send ``sig`` to one server and wait for it to exit; returns its exit code."""
        proc = self._procs.pop(party)
        proc.send_signal(sig)
        return _reap(proc, timeout)

    def stop(self, timeout: float = 30.0) -> dict[int, int]:
        """SIGTERM every server (drain), SIGKILL what remains; returns exit codes."""
        codes: dict[int, int] = {}
        for party in list(self._procs):
            self._procs[party].send_signal(signal.SIGTERM)
        for party in list(self._procs):
            codes[party] = _reap(self._procs.pop(party), timeout)
        return codes

    def pid(self, party: int) -> int:
        """The process id of party ``party``'s server; ``KeyError`` if it was not started."""
        return self._procs[party].pid

    def alive(self, party: int) -> bool:
        proc = self._procs.get(party)
        return proc is not None and proc.poll() is None

    # --- what clients need ----------------------------------------------------------------

    @property
    def config(self) -> ClusterConfig:
        return load_cluster(self.cluster_file)

    @property
    def certs_dir(self) -> Path:
        """Where the CA, party and client certificates live (with TLS)."""
        return self.directory / "certs"

    def client_files(self, client_id: str, role: str = "trainer") -> CertFiles | None:
        """The client certificate and key of trainer (or collector) ``client_id``, issued
        by the cluster CA on first use; None without TLS (the servers check nobody)."""
        if not self.tls:
            return None
        return provision_client(self.certs_dir, client_id, role)

    def client_kwargs(self, client_id: str, role: str = "trainer") -> ClientFiles:
        """``cert=`` and ``key=`` for a client (empty without TLS)."""
        files = self.client_files(client_id, role)
        return ClientFiles() if files is None else ClientFiles(cert=files.cert, key=files.key)

    def ca_pem(self) -> bytes | None:
        cfg = self.config
        return None if cfg.tls is None else read_pem(cfg.tls.ca)

    def log_text(self, party: int) -> str:
        path = self.directory / f"party-{party}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- waiting --------------------------------------------------------------------------

    def _wait_port_file(self, party: int, deadline: float) -> tuple[int, int]:
        port_file = self.directory / f"party-{party}.port"
        while time.monotonic() < deadline:
            if port_file.exists():
                a, b = port_file.read_text().split()
                return int(a), int(b)
            proc = self._procs.get(party)
            if proc is not None and proc.poll() is not None:
                raise ConfigError(
                    f"party {party} exited with code {proc.returncode} during start-up; "
                    f"log:\n{self.log_text(party)[-4000:]}"
                )
            time.sleep(0.05)
        raise ConfigError(f"party {party} did not report its ports in time")

    def wait_healthy(self, party: int, deadline: float) -> None:
        """Wait until ``party`` answers health checks on both ports (with TLS, over mutual
        TLS as that party itself: its ports take no connection without a certificate)."""
        while time.monotonic() < deadline:
            if check_health(self.config, party, timeout=2.0):
                return
            time.sleep(0.1)
        raise ConfigError(f"party {party} did not become healthy in time")


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` to exit (SIGKILL after ``timeout``); its exit code."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)
