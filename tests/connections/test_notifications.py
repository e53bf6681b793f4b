"""Notifications to the managers (connections.notifications): who is emailed, the signed webhook, and a delivery
that fails without failing the refresh that sent it.

The webhook goes to a real receiver on loopback, the email through Django's test outbox, or, to fail, through
the SMTP backend to a port where nothing listens.
"""

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group, Permission
from django.utils import timezone

from connections.notifications import manager_emails, notify_managers
from connections.oauth_client import ProviderError
from tests.conftest import refresh_shared_token
from tests.controlroom.helpers import closed_port


class _Hook(ThreadingHTTPServer):
    """A webhook receiver: keeps each request's headers and body, answers with `status`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.status = 204
        self.received: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/hook"


class _HookHandler(BaseHTTPRequestHandler):
    server: _Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook(settings) -> Iterator[_Hook]:
    """The receiver, running, and NOTIFY_WEBHOOK_URL pointing at it (no secret unless a test sets one)."""
    server = _Hook()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings.NOTIFY_WEBHOOK_URL = server.url
    settings.NOTIFY_WEBHOOK_SECRET = ""
    yield server
    server.shutdown()
    server.server_close()


def _with_email(user, email: str):
    user.email = email
    user.save()
    return user


# Notifications go out when the failure is committed, so this test commits for real.
@pytest.mark.django_db(transaction=True)
def test_the_webhook_is_signed(connected, authserver, hook, settings):
    # given a webhook with a secret
    settings.NOTIFY_WEBHOOK_SECRET = "webhook-secret"
    # when the provider rejects a refresh for good
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    with pytest.raises(ProviderError):
        refresh_shared_token(connected)

    # then the event arrives, signed with HMAC-SHA256 of its exact body
    headers, body = hook.received[0]
    expected = "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-ControlRoom-Signature"] == expected
    payload = json.loads(body)
    assert (payload["event"], payload["connection"]) == ("reauthorization_required", connected.slug)


@pytest.mark.django_db
def test_the_managers_are_the_active_users_who_may_manage_connections(make_user):
    # given managers by each route, and people who are not (or cannot be written to)
    managing = Group.objects.create(name="Administrators")
    managing.permissions.add(Permission.objects.get(codename="manage_connections"))
    viewing = Group.objects.create(name="Auditors")
    viewing.permissions.add(Permission.objects.get(codename="view_connections"))
    _with_email(make_user(perms=("manage_connections",)), "direct@example.com")
    _with_email(make_user(roles=(managing,)), "by-role@example.com")
    _with_email(make_user(roles=(managing,), perms=("manage_connections",)), "both-ways@example.com")
    root = _with_email(make_user(), "root@example.com")
    root.is_superuser = True
    root.save()
    gone = _with_email(make_user(perms=("manage_connections",)), "gone@example.com")
    gone.is_active = False
    gone.save()
    make_user(perms=("manage_connections",))  # no email address
    _with_email(make_user(roles=(viewing,), perms=("view_connections",)), "viewer@example.com")
    _with_email(make_user(), "nobody@example.com")

    # when / then: each address once, sorted; the inactive, the viewers and the empty address are left out
    assert manager_emails() == [
        "both-ways@example.com",
        "by-role@example.com",
        "direct@example.com",
        "root@example.com",
    ]


@pytest.mark.django_db
def test_the_managers_are_emailed_and_the_webhook_gets_the_event(make_user, make_connection, hook, mailoutbox):
    # given two managers and a webhook without a secret
    for email in ("b@example.com", "a@example.com"):
        _with_email(make_user(perms=("manage_connections",)), email)
    connection = make_connection(register=False)

    # when
    notify_managers(event="refresh_failing", connection=connection, subject="Refreshing X fails", message="Body.")

    # then one email to both, its subject marked as Control Room's
    assert [(mail.subject, mail.body, sorted(mail.to)) for mail in mailoutbox] == [
        ("[Control Room] Refreshing X fails", "Body.", ["a@example.com", "b@example.com"])
    ]
    # and the webhook gets the event as JSON, unsigned (there is no secret to sign with)
    ((headers, body),) = hook.received
    assert headers["Content-Type"] == "application/json" and "X-ControlRoom-Signature" not in headers
    payload = json.loads(body)
    sent_at = datetime.fromisoformat(payload.pop("at"))
    assert sent_at.tzinfo is not None and abs(timezone.now() - sent_at) < timedelta(minutes=1)
    assert payload == {
        "event": "refresh_failing",
        "connection": connection.slug,
        "subject": "Refreshing X fails",
        "message": "Body.",
    }


@pytest.mark.parametrize(
    ("webhook", "logged"),
    [
        ("answers 500", "The webhook answered HTTP 500 to 'refresh_failing' for {slug}"),
        ("is unreachable", "Could not deliver the webhook 'refresh_failing' for {slug}: ConnectionError"),
    ],
)
@pytest.mark.django_db
def test_a_notification_that_cannot_be_delivered_is_logged_and_never_raises(
    webhook, logged, make_user, make_connection, hook, settings, caplog
):
    # given a manager whose mail server refuses connections, and a webhook that fails
    _with_email(make_user(perms=("manage_connections",)), "manager@example.com")
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 5
    hook.status = 500
    if webhook == "is unreachable":
        settings.NOTIFY_WEBHOOK_URL = f"http://127.0.0.1:{closed_port()}/hook"
    connection = make_connection(register=False)

    # when the refresh engine notifies (it must go on whatever happens to the notification)
    notify_managers(event="refresh_failing", connection=connection, subject="s", message="m")

    # then nothing is raised, the failed email does not stop the webhook, and both failures are logged
    assert len(hook.received) == (1 if webhook == "answers 500" else 0)
    records = [record for record in caplog.records if record.name == "connections.notifications"]
    messages = [record.getMessage() for record in records]
    assert f"Could not email the notification 'refresh_failing' for {connection.slug}" in messages
    assert logged.format(slug=connection.slug) in messages
    assert all(record.levelno >= logging.WARNING for record in records)
