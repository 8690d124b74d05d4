"""A local port forwarder over SSH, like ``ssh -L 127.0.0.1:PORT:host:port``.

Listens on 127.0.0.1 only (never all interfaces), on an ephemeral port chosen by the kernel
(bound once and kept: no pick-then-close race). Each accepted connection becomes a
direct-tcpip channel to ``(host, port)`` as seen from the SSH server, pumped both ways by a
thread. When the SSH connection dies, the next accepted connection re-establishes it
(:class:`~jlabgw.cluster.ssh.connection.SSHConnection` retries with a bounded backoff) and
the local port stays the same, so a client only sees a dropped socket it can reopen.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from typing import Any

import paramiko

from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.errors import SSHError

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_POLL = 0.5  # seconds between checks for shutdown while idle


class Forwarder:
    """Forward ``127.0.0.1:<local_port>`` to ``remote_host:remote_port`` through SSH."""

    def __init__(self, connection: SSHConnection, remote_host: str, remote_port: int) -> None:
        self.connection = connection
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.local_port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._pairs: set[tuple[socket.socket, paramiko.Channel]] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"forward-{self.local_port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for sock, chan in pairs:
            _close(sock, chan)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], _POLL)
            except (OSError, ValueError):
                return  # listener closed
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(client,), name="forward-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            channel = self.connection.open_channel(self.remote_host, self.remote_port)
        except SSHError as exc:
            log.warning("forwarding to %s:%d failed: %s", self.remote_host, self.remote_port, exc)
            client.close()
            return
        pair = (client, channel)
        with self._lock:
            self._pairs.add(pair)
        try:
            _pump(client, channel, self._stop)
        finally:
            with self._lock:
                self._pairs.discard(pair)
            _close(client, channel)


def _pump(sock: socket.socket, chan: paramiko.Channel, stop: threading.Event) -> None:
    watched: list[Any] = [sock, chan]  # both have fileno(); select does not mind the mix
    while not stop.is_set():
        try:
            ready, _, _ = select.select(watched, [], [], _POLL)
        except (OSError, ValueError):
            return
        if sock in ready:
            try:
                data = sock.recv(_CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                chan.sendall(data)
            except (OSError, paramiko.SSHException, EOFError):
                return
        if chan in ready:
            try:
                data = chan.recv(_CHUNK)
            except (OSError, paramiko.SSHException, EOFError):
                return
            if not data:
                return
            try:
                sock.sendall(data)
            except OSError:
                return
        if chan.closed or chan.eof_received:
            # The far end is gone (a dropped SSH connection closes its channels), but what it
            # sent before may still sit in the channel's buffer: hand it over first, or the
            # last output before a drop would be lost on this side.
            _drain(chan, sock)
            return


def _drain(chan: paramiko.Channel, sock: socket.socket) -> None:
    with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
        for _ in range(10_000):  # bounded: a closed channel's buffer only shrinks
            if not chan.recv_ready():
                return
            data = chan.recv(_CHUNK)
            if not data:
                return
            sock.sendall(data)


def _close(sock: socket.socket, chan: paramiko.Channel) -> None:
    with contextlib.suppress(OSError):
        sock.close()
    with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
        chan.close()
