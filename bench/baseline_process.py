"""The baseline server as a child process, and the TLS material it and its clients use.

:class:`BaselineCredentials` is a development CA of the baseline's own (one server
certificate, client certificates issued in memory); :class:`BaselineServer` starts
``python -m bench.baseline`` on 127.0.0.1 port 0, reads the port it got from a file
and dials channels to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mpcagg.ops.credentials import KeyPair, issue_client_cert, load_key_pair, provision_dev
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.identity import check_role

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BaselineCredentials:
    """TLS material of the baseline server (a dev CA of its own) and its clients."""

    ca: bytes
    ca_cert: Path
    cert: Path
    key: Path
    _ca_pair: KeyPair = field(repr=False)
    _clients: dict[tuple[str, str], KeyPair] = field(default_factory=dict, repr=False)

    @classmethod
    def provision(cls, directory: Path) -> BaselineCredentials:
        """A fresh development CA and server certificate under ``directory``."""
        creds = provision_dev(directory, 1)
        return cls(
            ca=creds.ca_cert.read_bytes(),
            ca_cert=creds.ca_cert,
            cert=creds.parties[0].cert,
            key=creds.parties[0].key,
            _ca_pair=load_key_pair(creds.ca_cert, creds.ca_key),
        )

    def client(self, client_id: str, role: str = "trainer") -> KeyPair:
        """A client certificate from the baseline's CA (issued once, in memory)."""
        pair = self._clients.get((client_id, role))
        if pair is None:
            pair = issue_client_cert(self._ca_pair, client_id, check_role(role))
            self._clients[client_id, role] = pair
        return pair


class BaselineServer:
    """The baseline server process (use as a context manager)."""

    def __init__(
        self, directory: Path, creds: BaselineCredentials | None, durable: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.creds = creds
        self.durable = durable
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server process's id (only while it runs)."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, the port the server reported once listening."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> BaselineServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Start ``python -m bench.baseline`` and wait until it listens and a channel is
        ready; raises ``RuntimeError`` with the log's tail if it exits or reports no port
        within ``timeout``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        port_file = self.directory / "baseline.port"
        port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bench.baseline", "--port-file", str(port_file)]
        if self.creds is not None:
            cmd += ["--cert", str(self.creds.cert), "--key", str(self.creds.key)]
            cmd += ["--ca", str(self.creds.ca_cert)]
        if self.durable:
            cmd += ["--durable-dir", str(self.directory / "spool")]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        log = open(self.directory / "baseline.log", "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.directory / "baseline.log").read_text(errors="replace")
                raise RuntimeError(f"the baseline server did not start; log:\n{log_text[-3000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        channel = self.channel(self.creds.client("collector", "collector") if self.creds else None)
        try:
            grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 1))
        finally:
            channel.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; a no-op if not running."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def channel(self, client: KeyPair | None, address: str | None = None) -> grpc.Channel:
        """A new channel presenting ``client``'s certificate (one per trainer, as each secure
        trainer dials its own)."""
        limit = Limits().max_message_bytes
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ]
        target = address or self.address
        if self.creds is None:
            return grpc.insecure_channel(target, options=options)
        if client is None:
            raise ValueError("the baseline server requires a client certificate (mutual TLS)")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.creds.ca,
            private_key=client.key_pem,
            certificate_chain=client.cert_pem,
        )
        return grpc.secure_channel(target, credentials, options=options)
