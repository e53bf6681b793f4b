"""Refresh semantics (DESIGN.md): rotation-safe writes, default lifetimes, margins, the sweep, notifications."""

import hashlib
import hmac
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.db import connections as db_connections
from django.utils import timezone

from connections import services
from connections.models import OAuthToken
from connections.oauth_client import ProviderError
from tests.conftest import connect, shared_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def connected(make_connection, manager_client, authserver):
    connection = make_connection()
    manager_client.get(connect(manager_client, connection, authserver))
    return connection


@pytest.fixture
def manager_with_email(manager):
    manager.email = "ops@example.com"
    manager.save()
    return manager


def _refresh(connection) -> OAuthToken:
    return services.token_refresh(token=shared_token(connection), actor_label="test")


def test_rotation_stores_the_new_refresh_token_with_the_new_access_token(connected, authserver):
    before = shared_token(connected)
    after = _refresh(connected)
    assert after.refresh_token != before.refresh_token and after.access_token != before.access_token
    assert after.generation == before.generation + 1
    # The old refresh token is spent at the provider; the stored one is the one that works.
    authserver.set_fault("none")
    assert _refresh(connected).access_token != after.access_token


def test_a_response_without_refresh_token_keeps_the_old_one_and_merges_fields(connected, authserver):
    authserver.set_token_extra({"instance_url": "https://acme.example"})
    first = _refresh(connected)
    authserver.set_token_options(omit_refresh_token_on_refresh=True)
    authserver.set_token_extra({"issued_at": "1700000000"})
    second = _refresh(connected)
    assert second.refresh_token == first.refresh_token
    assert second.extra == {"instance_url": "https://acme.example", "issued_at": "1700000000"}


def test_no_expires_in_uses_the_default_lifetime_so_the_token_is_still_refreshed(connected, authserver, settings):
    authserver.set_token_options(omit_expires_in=True)
    connected.default_token_lifetime = 1200
    connected.save()
    token = _refresh(connected)
    lifetime = (token.expires_at - token.obtained_at).total_seconds()
    assert lifetime == pytest.approx(1200, abs=2)
    assert token.next_refresh_at == token.expires_at - timedelta(seconds=settings.TOKEN_REFRESH_MARGIN)


def test_the_margin_is_never_more_than_half_the_lifetime(make_connection, settings):
    connection = make_connection(register=False)
    assert services.refresh_margin(connection, 60) == 30
    assert services.refresh_margin(connection, 3600) == settings.TOKEN_REFRESH_MARGIN
    connection.provider.refresh_margin = 900
    assert services.refresh_margin(connection, 3600) == 900
    assert services.refresh_margin(connection, 1000) == 500


def test_the_sweep_claims_due_tokens_once(connected, make_connection, manager_client, authserver, settings):
    disabled = make_connection()
    manager_client.get(connect(manager_client, disabled, authserver))
    disabled.is_enabled = False
    disabled.save()
    OAuthToken.objects.update(next_refresh_at=timezone.now() - timedelta(seconds=1))

    due = services.token_refresh_claim_due()

    token = shared_token(connected)
    assert due == [(token.pk, token.generation)]
    assert token.next_refresh_at > timezone.now()  # claimed: the next sweep leaves it alone
    assert services.token_refresh_claim_due() == []
    # A token due within the next sweep interval is taken now rather than one interval late.
    OAuthToken.objects.filter(pk=token.pk).update(
        next_refresh_at=timezone.now() + timedelta(seconds=settings.BEAT_INTERVAL - 2)
    )
    assert services.token_refresh_claim_due() == [(token.pk, token.generation)]


def test_a_queued_refresh_that_someone_else_already_did_calls_nobody(connected, authserver):
    token = shared_token(connected)
    _refresh(connected)
    services.token_refresh_scheduled(token_id=token.pk, generation=token.generation)
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_in_one_process_call_the_provider_once(connected, authserver):
    authserver.set_token_options(latency=1)
    token = shared_token(connected)

    def refresh(_: int) -> str:
        try:
            mine = OAuthToken.objects.select_related("connection__provider").get(pk=token.pk)
            return services.token_refresh(
                token=mine, actor_label="thread", min_generation=token.generation
            ).access_token
        finally:
            db_connections.close_all()

    with ThreadPoolExecutor(10) as pool:
        results = set(pool.map(refresh, range(10)))
    assert len(results) == 1
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


# Notifications go out when the failure is committed, so these tests commit for real.
@pytest.mark.django_db(transaction=True)
def test_invalid_grant_notifies_the_managers_once(connected, authserver, manager_with_email, mailoutbox):
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    for _ in range(3):
        with pytest.raises(ProviderError):
            _refresh(connected)
    token = shared_token(connected)
    assert token.state == "reauthorization_required" and token.next_refresh_at is None
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["ops@example.com"]
    assert "needs to be authorized again" in mailoutbox[0].subject
    assert token.refresh_token not in mailoutbox[0].body


# Notifications go out when the failure is committed, so these tests commit for real.
@pytest.mark.django_db(transaction=True)
def test_sustained_failure_and_recovery_notices(connected, authserver, manager_with_email, mailoutbox, settings):
    settings.REFRESH_FAILURE_NOTIFY_THRESHOLD = 2
    authserver.set_fault("status_500")
    for expected_mails in (0, 1, 1):
        with pytest.raises(ProviderError):
            _refresh(connected)
        assert len(mailoutbox) == expected_mails
    token = shared_token(connected)
    assert token.state == "refresh_failing" and token.consecutive_failures == 3
    assert token.next_refresh_at > timezone.now()
    authserver.clear_fault()
    recovered = _refresh(connected)
    assert recovered.state == "active" and recovered.consecutive_failures == 0
    assert [mail.subject for mail in mailoutbox] == [
        f"[Control Room] Refreshing {connected} keeps failing",
        f"[Control Room] Refreshing {connected} works again",
    ]


def test_backoff_grows_with_jitter():
    delays = [services._backoff_seconds(failures) for failures in (1, 2, 3, 4, 10, 20)]
    assert 7.5 <= delays[0] <= 15 and 15 <= delays[1] <= 30 and 30 <= delays[2] <= 60
    assert all(delay <= 30 * 60 for delay in delays)
    assert len({services._backoff_seconds(3) for _ in range(20)}) > 1


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
        _refresh(connected)
    server.server_close()

    headers, body = received[0]
    expected = "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-ControlRoom-Signature"] == expected
    payload = json.loads(body)
    assert (payload["event"], payload["connection"]) == ("reauthorization_required", connected.slug)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["status_500", "invalid_grant"])
def test_concurrent_callers_share_a_failed_refresh(connected, authserver, fault):
    authserver.set_token_options(latency=1)
    authserver.set_fault(fault, grant_types=["refresh_token"])
    token = shared_token(connected)

    def refresh(_: int) -> str:
        try:
            mine = OAuthToken.objects.select_related("connection__provider").get(pk=token.pk)
            services.token_refresh(token=mine, actor_label="thread", min_generation=token.generation)
        except ProviderError as exc:
            return exc.message
        finally:
            db_connections.close_all()
        return "refreshed"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(refresh, range(8)))
    assert "refreshed" not in outcomes
    # One call reached the provider; everyone else read its result instead of presenting the token again.
    assert authserver.stats()["token_requests"]["refresh_token"] == 1
    assert shared_token(connected).consecutive_failures == 1
