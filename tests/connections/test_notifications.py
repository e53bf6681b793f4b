"""Notifications to the managers (connections.notifications): the signed webhook."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from connections.oauth_client import ProviderError
from tests.conftest import refresh_shared_token


# Notifications go out when the failure is committed, so these tests commit for real.
@pytest.mark.django_db(transaction=True)
def test_the_webhook_is_signed(connected, authserver, settings):
    received: list[tuple[dict, bytes]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    settings.NOTIFY_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hook"
    settings.NOTIFY_WEBHOOK_SECRET = "webhook-secret"
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    with pytest.raises(ProviderError):
        refresh_shared_token(connected)
    server.server_close()

    headers, body = received[0]
    expected = "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-ControlRoom-Signature"] == expected
    payload = json.loads(body)
    assert (payload["event"], payload["connection"]) == ("reauthorization_required", connected.slug)
