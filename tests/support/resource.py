"""A loopback API (resource server) for the API proxy's tests: it notes what each request brought (headers, body
size and digest) and answers as told, per path; a large answer is written in pieces, never built whole."""

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Content-Type", "application/json")])
    body: bytes = b'{"ok": true}'
    generated_size: int = 0  # > 0: a body of this many bytes, written 64 KiB at a time


@dataclass
class Received:
    method: str
    path: str  # with its query, as the request line had it
    headers: list[tuple[str, str]]
    body_size: int
    body_sha256: str

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


@dataclass
class ResourceServer:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)  # by path without query; others get Answer()
    queued: dict[str, list[Answer]] = field(default_factory=dict)  # by path: given first, one a request, in order


PIECE = 64 * 1024


def generated(size: int) -> Iterator[bytes]:
    """A repeatable body of `size` bytes, in pieces (the same bytes the digest of a test is taken over)."""
    pattern = bytes(range(256)) * (PIECE // 256)
    while size > 0:
        yield pattern[: min(size, PIECE)]
        size -= PIECE


def _read_body(handler: BaseHTTPRequestHandler) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        while True:
            length = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if length == 0:
                handler.rfile.readline()
                break
            data = handler.rfile.read(length)
            handler.rfile.readline()
            digest.update(data)
            size += len(data)
        return size, digest.hexdigest()
    left = int(handler.headers.get("Content-Length") or 0)
    while left > 0:
        data = handler.rfile.read(min(PIECE, left))
        if not data:
            break
        digest.update(data)
        size, left = size + len(data), left - len(data)
    return size, digest.hexdigest()


@contextmanager
def resource_server() -> Iterator[ResourceServer]:
    state = ResourceServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            size, sha = _read_body(self)
            state.received.append(Received(self.command, self.path, list(self.headers.items()), size, sha))
            path = self.path.split("?")[0]
            queued = state.queued.get(path)
            answer = queued.pop(0) if queued else state.answers.get(path, Answer())
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            length = answer.generated_size or len(answer.body)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD":
                return
            for piece in generated(answer.generated_size) if answer.generated_size else [answer.body]:
                self.wfile.write(piece)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
