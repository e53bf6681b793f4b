"""A loopback TCP relay that holds each HTTP request for a while before the upstream server sees any of it.

It exists to kill a client *while its request is in flight but before the provider has processed it*: the
relay reads the whole request, waits `delay` seconds while watching the client's socket, and only then
connects to the upstream server and forwards the request. A client that went away meanwhile (closed, reset,
killed: the kernel closes a dead process's sockets) is dropped and nothing reaches upstream, so a rotating
authorization server never sees, and never rotates, the refresh token of a request whose answer nobody would
read. Stdlib only; threads; started in-process::

    with Relay("127.0.0.1", upstream_port, delay=30) as relay:
        token_url = relay.url("/o/token/")
        ...
        relay.delay = 0  # requests received from now on are forwarded at once
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Self

HEADER_END = b"\r\n\r\n"
MAX_HEADER = 64 * 1024


@dataclass
class RelayStats:
    received: int = 0  # complete requests read from clients
    holding: int = 0  # requests being held right now
    forwarded: int = 0  # requests sent upstream
    dropped: int = 0  # requests whose client went away before they were forwarded


class Relay:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.stats = RelayStats()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            for sock in list(self._sockets):
                _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("relay not started")
        return self._server.getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def snapshot(self) -> RelayStats:
        with self._lock:
            return RelayStats(**vars(self.stats))

    # --- internals ---------------------------------------------------------------------------

    def _spawn(self, target, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, change in changes.items():
                setattr(self.stats, name, getattr(self.stats, name) + change)

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._handle, self._track(client))

    def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            request = _read_request(client)
            if request is None:
                return
            self._count(received=1, holding=1)
            try:
                alive = self._hold(client, self.delay)
            finally:
                self._count(holding=-1)
            if not alive:
                self._count(dropped=1)
                return
            upstream = self._track(socket.create_connection(self.upstream, timeout=10))
            upstream.sendall(request)
            self._count(forwarded=1)
            _pump(client, upstream, self._stopping)
        except OSError:
            pass
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _hold(self, client: socket.socket, delay: float) -> bool:
        """Wait `delay` seconds; False as soon as the client has gone away."""
        deadline = time.monotonic() + delay
        while True:
            if not _client_alive(client):
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.is_set():
                return not self._stopping.is_set()
            time.sleep(min(0.05, remaining))


def _client_alive(client: socket.socket) -> bool:
    readable, _, _ = select.select([client], [], [], 0)
    if not readable:
        return True
    try:
        # A well-behaved HTTP client sends nothing more while it waits for the answer: readable means EOF/reset.
        return bool(client.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def _read_request(client: socket.socket) -> bytes | None:
    """The request's bytes (headers and Content-Length body), or None if the client closed first."""
    client.settimeout(10)
    data = b""
    while HEADER_END not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_HEADER:
            raise OSError("request headers too large")
    head, _, body = data.partition(HEADER_END)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + HEADER_END + body


def _pump(client: socket.socket, upstream: socket.socket, stopping: threading.Event) -> None:
    """Copy bytes both ways until either side closes."""
    client.settimeout(None)
    upstream.settimeout(None)
    peers = {client: upstream, upstream: client}
    while not stopping.is_set():
        readable, _, _ = select.select(list(peers), [], [], 0.2)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            peers[sock].sendall(chunk)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
