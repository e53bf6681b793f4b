"""The Device Code grant (RFC 8628) against the loopback server's real device endpoints (django-oauth-toolkit):
Connect asks for a user code and queues the polling for a worker; the page shows the code, the link and its QR
code; a poll completes the connection once a person approves at the provider, and slow_down, denial and expiry
each end as the RFC says, in words on the page."""

from datetime import timedelta

import pytest
from django.utils import timezone

from connections.engine import refresh
from connections.engine.store import connection_client_config
from connections.errors import ProviderError
from connections.flows import device
from connections.models import Connection, DeviceAuthorization
from connections.oauth import client as oauth_client
from connections.web import views
from providers.models import Provider
from tests.conftest import PROVIDER_USER, messages_of, shared_token
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db

Status = DeviceAuthorization.Status


@pytest.fixture
def queued(monkeypatch) -> list[tuple]:
    """What the web request queued for a worker (the test runs the polls itself)."""
    sent: list[tuple] = []
    monkeypatch.setattr(
        views.current_app, "send_task", lambda name, args, countdown: sent.append((name, args, countdown))
    )
    return sent


def start_device_authorization(manager_client, connection) -> DeviceAuthorization:
    response = manager_client.post(f"/oauth/connect/{connection.slug}/")
    started = DeviceAuthorization.objects.get(connection=connection)
    assert response.status_code == 302 and response["Location"] == f"/oauth/device/{started.pk}/", messages_of(response)
    return started


def test_connect_shows_the_user_code_and_a_worker_completes_it_after_approval(
    make_connection, manager_client, authserver, queued
):
    connection = make_connection(grant_type="device_code")
    started = start_device_authorization(manager_client, connection)
    # the web request only asked for the codes and queued the first poll, at the provider's interval
    assert queued == [(views.DEVICE_POLL_TASK, (started.pk,), started.interval)]
    assert authserver.stats()["token_requests"]["device_code"] == 0
    page = manager_client.get(f"/oauth/device/{started.pk}/").content.decode()
    assert started.user_code in page and f'href="{started.verification_uri}"' in page
    assert started.verification_uri_complete.endswith(f"user_code={started.user_code}") and "<svg" in page
    assert '<meta http-equiv="refresh"' in page

    # before anyone approves, the provider says authorization_pending and a poll says to wait; after, it stores
    with pytest.raises(ProviderError, match="authorization_pending"):
        oauth_client.device_token(connection_client_config(connection), device_code=started.device_code)
    assert device.device_authorization_poll(started.pk) == started.interval
    authserver.approve_device(started.user_code, *PROVIDER_USER)
    assert device.device_authorization_poll(started.pk) is None
    started.refresh_from_db()
    assert (started.status, started.device_code) == (Status.APPROVED, "")
    token = shared_token(connection)
    assert authserver.whoami(token.access_token).json()["username"] == PROVIDER_USER[0]
    assert refresh.token_refresh(token=token, actor_label="test").refresh_token != token.refresh_token
    page = manager_client.get(f"/oauth/device/{started.pk}/").content.decode()
    assert f"{connection} is connected." in page and "http-equiv" not in page


def test_slow_down_adds_five_seconds_to_the_interval(make_connection, manager_client, authserver, queued):
    started = start_device_authorization(manager_client, make_connection(grant_type="device_code"))
    authserver.set_fault("slow_down", count=1)
    assert device.device_authorization_poll(started.pk) == started.interval + 5
    started.refresh_from_db()
    assert started.status == Status.PENDING
    assert device.device_authorization_poll(started.pk) == started.interval  # the slower pace is kept


@pytest.mark.parametrize(
    ("ending", "status", "said"),
    [
        ("denied", Status.DENIED, "denied at the provider"),
        ("expired at the provider", Status.EXPIRED, "expired before anyone approved it"),
        ("expired here", Status.EXPIRED, "expired before anyone approved it"),
    ],
)
def test_denial_and_expiry_end_it_with_a_clear_message(
    ending, status, said, make_connection, manager_client, authserver, queued
):
    connection = make_connection(grant_type="device_code")
    started = start_device_authorization(manager_client, connection)
    if ending == "denied":
        authserver.approve_device(started.user_code, *PROVIDER_USER, approve=False)
    elif ending == "expired at the provider":
        authserver.set_fault("expired_token")
    else:
        DeviceAuthorization.objects.filter(pk=started.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    polls_before = authserver.stats()["token_requests"]["device_code"]
    assert device.device_authorization_poll(started.pk) is None
    started.refresh_from_db()
    assert started.status == status and said in started.message and started.device_code == ""
    if ending == "expired here":
        assert authserver.stats()["token_requests"]["device_code"] == polls_before  # no call once expired
    assert shared_token(connection) is None
    page = manager_client.get(f"/oauth/device/{started.pk}/").content.decode()
    assert said in page and "http-equiv" not in page
    assert device.device_authorization_poll(started.pk) is None  # over: a late poll does nothing
    # and the connection keeps it, once, like a failed Connect
    connection.refresh_from_db()
    assert connection.last_failure.startswith("Connect (device code): ") and said in connection.last_failure
    assert connection.failures_in_a_row == 1


def test_someone_else_cannot_see_the_code(make_connection, manager_client, make_user, queued):
    from django.test import Client

    started = start_device_authorization(manager_client, make_connection(grant_type="device_code"))
    other = Client()
    other.force_login(make_user("curious", perms=(), staff=False))
    assert other.get(f"/oauth/device/{started.pk}/").status_code == 404


def test_a_provider_that_refuses_the_device_request_is_said_on_the_connection_page(
    make_connection, manager_client, authserver, queued
):
    connection = make_connection(grant_type="device_code", register=False)  # the provider does not know it
    response = manager_client.post(f"/oauth/connect/{connection.slug}/", follow=True)
    assert "Could not start the device authorization" in " ".join(messages_of(response))
    assert not DeviceAuthorization.objects.exists() and queued == []
    # kept on the connection, as a failed Connect of the other grants is (its page and list show it)
    connection.refresh_from_db()
    assert connection.last_failure.startswith("Connect: Could not start the device authorization")
    assert connection.failures_in_a_row == 1


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_polls_until_the_person_approves(make_stack, make_connection, manager, authserver):
    stack = make_stack()
    stack.worker()
    connection = make_connection(grant_type="device_code")
    started = device.device_authorization_start(connection=connection, user=manager)
    stack.send_task(views.DEVICE_POLL_TASK, started.pk)
    wait_for(lambda: authserver.stats()["token_requests"]["device_code"] >= 2, 30, "the worker polling")
    authserver.approve_device(started.user_code, *PROVIDER_USER)
    wait_for(lambda: shared_token(connection), 30, "the worker storing the approved token")
    started.refresh_from_db()
    assert started.status == Status.APPROVED


def test_apply_config_takes_and_export_writes_the_device_authorization_url(tmp_path, authserver):
    from io import StringIO

    from django.core.management import call_command

    from connections.models import Connection

    path = tmp_path / "controlroom.yaml"
    path.write_text(
        f"""
connections:
  - name: Headless runner
    provider: custom
    grant_type: device_code
    token_url: {authserver.token_url}
    device_authorization_url: {authserver.device_authorization_url}
    client_id: runner
"""
    )
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    connection = Connection.objects.get(slug="headless-runner")
    assert connection.effective_device_authorization_url == authserver.device_authorization_url
    assert connection.client_secret == ""  # a device is a public client
    exported = StringIO()
    call_command("export_config", stdout=exported)
    assert f"device_authorization_url: {authserver.device_authorization_url}" in exported.getvalue()
    assert "grant_type: device_code" in exported.getvalue()


def test_an_approval_arriving_after_the_connection_changed_stores_nothing(make_connection, make_user, authserver):
    from django.contrib.auth.models import Group

    # given a user-specific device connection that an invited user starts to authorize for themselves
    role = Group.objects.create(name="Runners")
    connection = make_connection(grant_type="device_code", token_type="user_specific")
    connection.roles.add(role)
    runner = make_user("runner", roles=(role,))
    started = device.device_authorization_start(connection=connection, user=runner)
    # when an administrator makes it shared meanwhile, and the person approves
    connection.token_type = "shared"
    connection.save(update_fields=["token_type"])
    authserver.approve_device(started.user_code, *PROVIDER_USER)
    # then their personal token does not become the token every bot of the connection gets
    assert device.device_authorization_poll(started.pk) is None
    started.refresh_from_db()
    assert started.status == Status.FAILED and "token type changed" in started.message
    assert not connection.tokens.exists()


def test_a_change_landing_while_the_token_url_answers_stores_nothing_and_revokes_it(
    make_connection, manager, authserver, monkeypatch
):
    # given a device authorization the person has approved, and a change to the connection that lands while the
    # worker's poll waits for the token URL's answer (at a provider whose revocation ends a token alone)
    connection = make_connection(grant_type="device_code")
    Provider.objects.filter(pk=connection.provider_id).update(revoke_replaced_grant=True)
    started = device.device_authorization_start(connection=connection, user=manager)
    authserver.approve_device(started.user_code, *PROVIDER_USER)
    poll, issued = device.oauth_client.device_token, []

    def poll_then_disable(*args, **kwargs):
        issued.append(poll(*args, **kwargs))
        Connection.objects.filter(pk=connection.pk).update(is_enabled=False)
        return issued[0]

    monkeypatch.setattr(device.oauth_client, "device_token", poll_then_disable)
    # when the poll completes
    assert device.device_authorization_poll(started.pk) is None
    # then nothing is stored, the page says why, and what the provider issued is ended there
    started.refresh_from_db()
    assert started.status == Status.FAILED and "it is disabled" in started.message
    assert not connection.tokens.exists()
    assert authserver.whoami(issued[0].access_token).status_code == 401


def test_it_ends_once_however_many_polls_finish_it(make_connection, manager, authserver):
    connection = make_connection(grant_type="device_code")
    started = device.device_authorization_start(connection=connection, user=manager)
    authserver.approve_device(started.user_code, *PROVIDER_USER)
    assert device.device_authorization_poll(started.pk) is None
    # a redelivered task's poll, or a dying one, cannot turn an approval into a failure
    device.device_authorization_end(started.pk, "Waiting for the approval failed (SoftTimeLimitExceeded).")
    started.refresh_from_db()
    assert started.status == Status.APPROVED and shared_token(connection) is not None


def test_starting_again_ends_the_earlier_wait_and_the_page_says_when_it_expired(
    make_connection, manager, manager_client, authserver
):
    connection = make_connection(grant_type="device_code")
    first = device.device_authorization_start(connection=connection, user=manager)
    second = device.device_authorization_start(connection=connection, user=manager)
    first.refresh_from_db()
    assert first.status == Status.FAILED and "newer device authorization replaced" in first.message
    connection.refresh_from_db()
    assert connection.last_failure == ""  # replaced, not failed
    DeviceAuthorization.objects.filter(pk=second.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    page = manager_client.get(f"/oauth/device/{second.pk}/").content.decode()  # no worker has polled it since
    assert "expired before anyone approved it" in page and "http-equiv" not in page


@pytest.mark.django_db(transaction=True)  # to see whether the admin's own transaction is still open
def test_save_and_connect_asks_the_provider_after_the_admins_transaction(make_connection, manager_client, queued):
    from django.db import connection as db

    connection = make_connection(grant_type="device_code")
    page = f"/admin/connections/connection/{connection.pk}/change/"
    form = manager_client.get(page).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update({"_connect": "1", "roles": [], "extra_authorization_params": "{}"})
    data.update({"tokens-TOTAL_FORMS": "0", "tokens-INITIAL_FORMS": "0"})
    in_transaction: list[bool] = []
    original = device.oauth_client.device_authorization

    def spy(config):
        in_transaction.append(db.in_atomic_block)
        return original(config)

    device.oauth_client.device_authorization = spy
    try:
        response = manager_client.post(page, {k: v for k, v in data.items() if v is not None})
    finally:
        device.oauth_client.device_authorization = original
    started = DeviceAuthorization.objects.get(connection=connection)
    assert response.status_code == 302 and response["Location"] == f"/oauth/device/{started.pk}/"
    assert in_transaction == [False] and len(queued) == 1
