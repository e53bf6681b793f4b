"""A loopback API for bench/proxy.py: as little CPU per request as a Python server can spend, so that what is
measured is the proxy's work, not the API's.

    python bench/api_stub.py PORT TOKEN

Under /base/: GET answers {"ok": true}; GET with ?bytes=N answers N bytes, written 64 KiB at a time; PUT and POST
read the body (Content-Length or chunked, never kept) and answer {"received": <bytes>}. Every request under /base/
must carry "Authorization: Bearer TOKEN" (the proxy adds it; the bench's direct calls send it themselves); one
without it is answered 401 and counted. GET /stats answers the counts as JSON. HTTP/1.1 keep-alive; one thread
per connection.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PIECE = 64 * 1024
_lock = threading.Lock()
_counts = {"requests": 0, "without_the_token": 0, "bytes_sent": 0, "bytes_received": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    authorization = ""

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per request would cost more than the request

    def _send(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if length is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if length is None:
            self.wfile.write(body)

    def _received(self) -> int:
        size = 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while length := int(self.rfile.readline().split(b";")[0].strip(), 16):
                size += len(self.rfile.read(length))
                self.rfile.readline()
            self.rfile.readline()
            return size
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0 and (data := self.rfile.read(min(PIECE, left))):
            size, left = size + len(data), left - len(data)
        return size

    def _checked(self) -> bool:
        with _lock:
            _counts["requests"] += 1
            if self.headers.get("Authorization") != self.authorization:
                _counts["without_the_token"] += 1
                self._send(401, b'{"error": "invalid_token"}')
                return False
        return True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/stats":
            with _lock:
                self._send(200, json.dumps(_counts).encode())
            return
        if not self._checked():
            return
        size = int(parse_qs(url.query).get("bytes", ["0"])[0])
        if not size:
            self._send(200, b'{"ok": true}')
            return
        self._send(200, b"", length=size)
        piece, left = b"x" * PIECE, size
        while left > 0:
            self.wfile.write(piece[: min(PIECE, left)])
            left -= PIECE
        with _lock:
            _counts["bytes_sent"] += size

    def do_PUT(self) -> None:
        size = self._received()  # read whatever happens: the connection is kept alive
        if not self._checked():
            return
        with _lock:
            _counts["bytes_received"] += size
        self._send(200, json.dumps({"received": size}).encode())

    do_POST = do_PUT


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    Handler.authorization = f"Bearer {token}"
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
