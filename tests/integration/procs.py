"""Server processes started by hand from a cluster file (not :class:`LocalCluster`),
for tests of what an operator configures: listen addresses, start-up errors, metrics.

Every wait is bounded; every process is stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mpcagg.ops.health import wait_healthy
from mpcagg.protocol.cluster import load_cluster

CLI = [sys.executable, "-m", "mpcagg.ops.cli"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nothing listens on now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def q(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cluster_toml(
    parties: Sequence[dict[str, object]], *, ca: Path | None, extra: str = "", name: str = "t"
) -> str:
    """A cluster file: ``parties`` are the ``[[parties]]`` tables (values quoted here)."""
    lines = [f"name = {q(name)}", ""]
    if ca is not None:
        lines += ["[tls]", f"ca = {q(ca)}", ""]
    lines += ["[limits]", "min_cohort = 1", "rpc_timeout_s = 10.0", "drain_timeout_s = 2.0", ""]
    if extra:
        lines += [extra, ""]
    for p in parties:
        lines.append("[[parties]]")
        for key, value in p.items():
            lines.append(f"{key} = {value}" if isinstance(value, int) else f"{key} = {q(value)}")
        lines.append("")
    return "\n".join(lines)


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def server(
    cluster_file: Path, party: int, *extra: str, log: Path | None = None, wait: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """``mpcagg server`` for ``party``, healthy on both ports, stopped on exit."""
    log = log or cluster_file.parent / f"party-{party}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*CLI, "server", "--config", str(cluster_file), "--party", str(party), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"party {party} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            ports = wait_healthy(load_cluster(cluster_file), party, wait=0, timeout=1.0)
            if all(p.serving for p in ports):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"party {party} not healthy: {ports}\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command; every other line must be a log
    record (the server's first line says which mpcagg starts), never a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line:\n{stderr}"
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr
    for line in lines:
        assert line in errors or line.startswith(("{", "20")), f"not a log line: {line!r}"
    return errors[0]
