"""A TCP relay in front of the Consul double, standing in for the NLB (and the servers' TLS).

Tests of the Consul client's kept-alive connections need to see connections from the server's
side and to break them the ways production does:
- `accepted`/`handshakes`: connections (and TLS handshakes) clients opened, counted here, not
  by the client under test;
- `close_idle()`: the server closes its idle connections (FIN), and the call returns once the
  client's kernel has acknowledged it, so the client can see it before its next request;
- `forget_idle()`: the NLB forgets idle flows (after 350 s): the next bytes a client sends on
  one are not forwarded but answered with a reset;
- `lose_response_to(prefix)`: the next request starting with `prefix` reaches the double, which
  applies it, but its response is replaced by a reset (a response lost in flight).

One thread per relayed connection, relaying with select(); commands reach it through a
socketpair, so no socket is ever used by two threads at once (an SSLSocket must not be).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from typing import Literal

Command = Literal["close", "forget", "stop"]

_TCP_FIN_WAIT2 = 5  # tcp_states.h: our FIN was acknowledged by the peer
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN (SO_LINGER on, zero timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _wait_fin_acknowledged(sock: socket.socket) -> None:
    """Wait (bounded) until the peer's kernel has acknowledged our FIN."""
    deadline = time.monotonic() + 5
    while sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_FIN_WAIT2:
        if time.monotonic() > deadline:
            raise AssertionError("the client never acknowledged the server's FIN")
        time.sleep(0.001)


class _Link(threading.Thread):
    """One client connection relayed to its own backend connection."""

    def __init__(self, front: TcpFront, raw: socket.socket) -> None:
        super().__init__(daemon=True, name="tcp-front-link")
        self._front = front
        self._raw = raw
        self._wake_r, self._wake_w = socket.socketpair()
        self._command: Command | None = None
        self._done = threading.Event()
        self.finished = threading.Event()

    def order(self, command: Command) -> None:
        """Have the relay thread carry out `command`; returns when it has."""
        self._done.clear()
        if self.finished.is_set():  # set before _done: a link ending now cannot be missed
            return
        self._command = command
        with contextlib.suppress(OSError):  # the link may be finishing right now
            self._wake_w.send(b"!")
        self._done.wait(timeout=10)

    def run(self) -> None:
        client: socket.socket = self._raw
        backend: socket.socket | None = None
        try:
            if self._front.tls is not None:
                client = self._front.tls.wrap_socket(self._raw, server_side=True)
                self._front.count("handshakes")
            backend = socket.create_connection(("127.0.0.1", self._front.backend_port))
            # Requests and responses come in several writes: without this, Nagle's algorithm and
            # the peer's delayed ACK hold each second write for 40 ms.
            for sock in (client, backend):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._relay(client, backend)
        except (OSError, ssl.SSLError):
            pass  # a client that failed its handshake or went away
        finally:
            for sock in (client, backend, self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
            self.finished.set()
            self._done.set()

    def _relay(self, client: socket.socket, backend: socket.socket) -> None:
        forgotten = False
        losing = False
        watched = [client, backend, self._wake_r]
        while True:
            # Bytes TLS already decrypted do not make the socket readable: serve them first.
            pending = isinstance(client, ssl.SSLSocket) and client.pending() > 0
            ready = [client] if pending else select.select(watched, [], [])[0]
            if self._wake_r in ready:
                self._wake_r.recv(16)
                if self._command == "close":
                    client.shutdown(socket.SHUT_WR)
                    _wait_fin_acknowledged(client)
                    return
                if self._command == "stop":
                    return
                forgotten = True
                self._done.set()
            if client in ready:
                data = client.recv(_CHUNK)
                if not data:
                    return
                if forgotten:
                    _reset(client)
                    return
                losing = losing or self._front.take_loss(data)
                backend.sendall(data)
            if backend in ready:
                data = backend.recv(_CHUNK)
                if not data:
                    return
                if losing:
                    _reset(client)
                    return
                client.sendall(data)


class TcpFront:
    """Listens on 127.0.0.1 and relays each connection to the double at `backend_port`.

    tls: a server context to terminate TLS with (the servers' HTTPS listener), or None.
    """

    def __init__(self, backend_port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.backend_port = backend_port
        self.tls = tls
        self.accepted = 0
        self.handshakes = 0
        self._lose: bytes | None = None
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-front")
        self._thread.start()

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}"

    def count(self, what: Literal["accepted", "handshakes"]) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self.count("accepted")
            link = _Link(self, raw)
            with self._lock:
                self._links.append(link)
            link.start()

    def _open_links(self) -> list[_Link]:
        with self._lock:
            return [link for link in self._links if not link.finished.is_set()]

    def close_idle(self) -> None:
        """The server closes every open connection (FIN), as on an idle timeout or a restart."""
        for link in self._open_links():
            link.order("close")

    def forget_idle(self) -> None:
        """The NLB forgets every open flow: the client's next bytes on one get a reset."""
        for link in self._open_links():
            link.order("forget")

    def lose_response_to(self, prefix: bytes) -> None:
        """The next request starting with `prefix` is applied, but its response never arrives."""
        with self._lock:
            self._lose = prefix

    def take_loss(self, request: bytes) -> bool:
        with self._lock:
            if self._lose is None or not request.startswith(self._lose):
                return False
            self._lose = None
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for link in self._open_links():
            link.order("stop")
        self._thread.join(timeout=5)
