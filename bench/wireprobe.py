"""Bytes on the wire, measured: a counting TCP relay in front of a server.

A trainer dialled through :class:`CountingRelay` has every TCP payload byte it
sends and receives counted: TLS handshake (with its client certificate) and records,
HTTP/2 frames, gRPC headers and metadata, the round check (``GetRound``) and the
upload itself. TLS is end to end (the relay only copies bytes), and the relay
listens on 127.0.0.1 like the server, so certificate checks are unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

_BUF = 1 << 20


class CountingRelay:
    """Listens on 127.0.0.1 (port 0) and relays each connection to ``target``."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._lock = threading.Lock()
        self.up_bytes = 0
        self.down_bytes = 0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        accept = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        accept.start()

    def __enter__(self) -> CountingRelay:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def reset(self) -> None:
        with self._lock:
            self.up_bytes = self.down_bytes = self.connections = 0

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._sockets += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, up), daemon=True)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        buf = bytearray(_BUF)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                dst.sendall(view[:n])
                with self._lock:
                    if up:
                        self.up_bytes += n
                    else:
                        self.down_bytes += n
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
