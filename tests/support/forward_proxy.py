"""A small authenticating forward proxy on loopback, for tests of the outbound proxy setting.

It speaks both ways a client uses a forward proxy: plain-HTTP proxying (the request line carries the absolute
URL, ``POST http://127.0.0.1:8000/o/token/ HTTP/1.1``) and ``CONNECT host:port`` tunnels for https. Every
request must carry ``Proxy-Authorization: Basic`` with the configured user and password, or it gets a 407.
Stdlib only; threads; started in-process::

    with ForwardProxy("user", "password") as proxy:
        settings.OUTBOUND_PROXY_URL = proxy.url()  # http://user:password@127.0.0.1:<port> (URL-encoded)
        ...
        assert proxy.count("127.0.0.1:8000") == 1

`seen` lists every request it forwarded or tunnelled (method, target host:port, path); `rejected` those it
answered 407.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import quote, urlsplit

# RFC 9110 7.6.1: connection-specific headers a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # host:port
    path: str  # "" for CONNECT


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the tests read `seen` instead

    def _authorized(self, method: str, target: str, path: str) -> bool:
        if self.headers.get("Proxy-Authorization", "") == self.server.expected_authorization:
            return True
        with self.server.lock:
            self.server.rejected.append(Seen(method, target, path))
        body = b"proxy authentication required\n"
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test proxy"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        return False

    def _record(self, method: str, target: str, path: str) -> None:
        with self.server.lock:
            self.server.seen.append(Seen(method, target, path))

    def do_CONNECT(self) -> None:
        target = self.path
        host, _, port = target.rpartition(":")
        if not self._authorized("CONNECT", target, ""):
            return
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except (OSError, ValueError):
            self.send_error(502, "cannot reach target")
            return
        self._record("CONNECT", target, "")
        self.send_response(200, "Connection Established")
        self.end_headers()
        self.close_connection = True
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()

    def _forward(self) -> None:
        url = urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "absolute http URL expected")
            return
        port = url.port or 80
        target = f"{url.hostname}:{port}"
        path = url.path or "/"
        if not self._authorized(self.command, target, path):
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, port, timeout=10)
        try:
            upstream.request(self.command, path + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
            response = upstream.getresponse()
            content = response.read()
        except OSError:
            self.send_error(502, "cannot reach target")
            return
        finally:
            upstream.close()
        self._record(self.command, target, path)
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(content)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    expected_authorization: str
    lock: threading.Lock
    seen: list[Seen]
    rejected: list[Seen]


class ForwardProxy:
    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        credentials = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        server.expected_authorization = f"Basic {credentials}"
        server.lock = threading.Lock()
        server.seen = []
        server.rejected = []
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return self._server.server_address[1]

    def url(self, *, user: str | None = None, password: str | None = None) -> str:
        """The proxy URL as OUTBOUND_PROXY_URL wants it; other credentials than the expected ones on request."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    @property
    def seen(self) -> list[Seen]:
        assert self._server is not None
        with self._server.lock:
            return list(self._server.seen)

    @property
    def rejected(self) -> list[Seen]:
        assert self._server is not None
        with self._server.lock:
            return list(self._server.rejected)

    def count(self, target: str | None = None) -> int:
        """Requests forwarded or tunnelled (to `target`, host:port, if given)."""
        return sum(1 for seen in self.seen if target is None or seen.target == target)

    def reset(self) -> None:
        assert self._server is not None
        with self._server.lock:
            self._server.seen.clear()
            self._server.rejected.clear()
