"""A minimal OAuth 2.0 token endpoint for bench/capacity.py: as little CPU per request as a Python server can
spend, so that what is measured is Control Room's refresh, not the provider's.

    python bench/provider_stub.py PORT LIFETIME_SECONDS

POST /token with grant_type=refresh_token answers a new access token and a new refresh token (rotation) that
expire in LIFETIME_SECONDS; a refresh token presented a second time is counted as a reuse (a client must never
do that) and still answered, so that the run goes on and the count tells. GET /stats answers the counts as JSON.
HTTP/1.1 keep-alive; one thread per connection.
"""

import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

_lock = threading.Lock()
_used: set[str] = set()
_counts = {"refreshes": 0, "reuses": 0, "other": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no waiting for an ACK between
    lifetime = 3600

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per request would cost more than the request

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        with _lock:
            self._answer(200, dict(_counts))

    def do_POST(self) -> None:
        form = dict(parse_qsl(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()))
        presented = form.get("refresh_token", "")
        if form.get("grant_type") != "refresh_token" or not presented:
            with _lock:
                _counts["other"] += 1
            self._answer(400, {"error": "unsupported_grant_type"})
            return
        with _lock:
            _counts["refreshes"] += 1
            if presented in _used:
                _counts["reuses"] += 1
            _used.add(presented)
        self._answer(
            200,
            {
                "access_token": "at-" + secrets.token_urlsafe(24),
                "refresh_token": "rt-" + secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            },
        )


def main() -> None:
    port, Handler.lifetime = int(sys.argv[1]), int(sys.argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
