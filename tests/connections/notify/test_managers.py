"""Notifications to the managers (connections.notify.managers): who is emailed, the signed webhook of the
environment's NOTIFY_WEBHOOK_URL, and a delivery that fails without failing the refresh that sent it.

The webhook goes to a real receiver on loopback (through the delivery task, run at once: Celery's eager mode),
the email through Django's test outbox, or, to fail, through the SMTP backend to a port where nothing listens.
"""

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.utils import timezone

from connections.errors import ProviderError
from connections.notify import webhooks
from connections.notify.managers import manager_emails, notify_managers
from tests.conftest import refresh_shared_token
from tests.support.processes import closed_port
from tests.support.receiver import WebhookReceiver


@pytest.fixture
def hook(settings, celery_eager) -> Iterator[WebhookReceiver]:
    """A receiver, running, and NOTIFY_WEBHOOK_URL (the environment's endpoint) pointing at it, unsigned unless a
    test sets a secret; deliveries run at once in this process."""
    receiver = WebhookReceiver(204).start()
    settings.NOTIFY_WEBHOOK_URL = receiver.url
    settings.NOTIFY_WEBHOOK_SECRET = ""
    yield receiver
    receiver.stop()


def _with_email(user, email: str):
    user.email = email
    user.save()
    return user


# Notifications go out when the failure is committed, so this test commits for real.
@pytest.mark.django_db(transaction=True)
def test_the_webhook_is_signed(bot_connection, authserver, hook, settings):
    # given a webhook with a secret
    settings.NOTIFY_WEBHOOK_SECRET = "webhook-secret"
    # when the provider rejects a refresh for good
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    with pytest.raises(ProviderError):
        refresh_shared_token(bot_connection)

    # then the event arrives, signed with HMAC-SHA256 of its exact body
    headers, body = hook.received[0]
    expected = "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-ControlRoom-Signature"] == expected
    payload = json.loads(body)
    assert (payload["event"], payload["connection"]) == ("token.reauthorization_required", bot_connection.slug)
    assert headers["X-ControlRoom-Event"] == "token.reauthorization_required"


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
def test_the_managers_are_emailed_and_the_webhook_gets_the_event(
    make_user, make_connection, hook, mailoutbox, django_capture_on_commit_callbacks
):
    # given two managers and a webhook without a secret
    for email in ("b@example.com", "a@example.com"):
        _with_email(make_user(perms=("manage_connections",)), email)
    connection = make_connection(register=False)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        notify_managers(
            event="token.refresh_failing", connection=connection, subject="Refreshing X fails", message="Body."
        )

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
    assert headers["X-ControlRoom-Delivery"] == payload.pop("id")
    assert payload == {
        "event": "token.refresh_failing",
        "connection": connection.slug,
        "message": "Refreshing X fails. Body.",
    }


@pytest.mark.parametrize(
    ("webhook", "logged"),
    [
        ("answers 500", "The webhook token.refresh_failing to endpoint 0 was given up: HTTP 500"),
        ("is unreachable", "The webhook token.refresh_failing to endpoint 0 was given up: ConnectionError"),
    ],
)
@pytest.mark.django_db
def test_a_notification_that_cannot_be_delivered_is_logged_and_never_raises(
    webhook, logged, make_user, make_connection, hook, settings, caplog, django_capture_on_commit_callbacks
):
    # given a manager whose mail server refuses connections, and a webhook that fails
    _with_email(make_user(perms=("manage_connections",)), "manager@example.com")
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 5
    hook.statuses = [500]
    if webhook == "is unreachable":
        settings.NOTIFY_WEBHOOK_URL = f"http://127.0.0.1:{closed_port()}/hook"
    connection = make_connection(register=False)

    # when the refresh engine notifies (it must go on whatever happens to the notification)
    with django_capture_on_commit_callbacks(execute=True):
        notify_managers(event="token.refresh_failing", connection=connection, subject="s", message="m")

    # then nothing is raised, the failed email does not stop the webhook (tried, retried, given up), and both
    # failures are logged
    assert len(hook.received) == (len(webhooks.RETRY_DELAYS) + 1 if webhook == "answers 500" else 0)
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("connections.")]
    assert f"Could not email the notification 'token.refresh_failing' for {connection.slug}" in messages
    assert logged in messages


def test_nobody_told_until_a_manager_has_an_email_or_a_webhook_gets_the_failures(
    make_user, make_connection, admin_client, settings
):
    from connections.models import OAuthToken, TokenState, WebhookEndpoint
    from connections.notify.managers import nobody_told

    settings.NOTIFY_WEBHOOK_URL = ""
    admin_client.get("/admin/")  # admin_client's superuser has an e-mail address: take it away
    from django.contrib.auth.models import User

    User.objects.update(email="")
    failing = make_connection(register=False, name="Failing CRM")
    OAuthToken.objects.create(
        connection=failing,
        access_token="a",
        state=TokenState.REFRESH_FAILING,
        last_error="HTTP 503 from the token URL",
        last_error_at=timezone.now(),
    )

    # given nobody: the dashboard and the failing connection's page say so
    assert nobody_told().startswith("Nobody will be told when a connection fails")
    dashboard = admin_client.get("/admin/connections/connection/dashboard/").content.decode()
    page = admin_client.get(f"/admin/connections/connection/{failing.pk}/change/").content.decode()
    for shown in (dashboard, page):
        assert 'class="errornote nobody-told"' in shown and "no webhook endpoint gets the failure events" in shown

    # a webhook that gets only other events does not count; one that gets the failures does
    endpoint = WebhookEndpoint.objects.create(
        name="ops", url="https://hooks.example/x", events=["connection.connected"]
    )
    assert nobody_told()
    endpoint.events = ["token.reauthorization_required"]
    endpoint.save()
    assert nobody_told() == ""
    endpoint.delete()

    # so does a manager with an e-mail address (not one without the permission)
    User.objects.filter(pk=make_user("viewer", perms=("view_connections",)).pk).update(email="viewer@example.com")
    assert nobody_told()
    User.objects.filter(is_superuser=True).update(email="admin@example.com")
    assert nobody_told() == ""
    assert "nobody-told" not in admin_client.get("/admin/connections/connection/dashboard/").content.decode()
