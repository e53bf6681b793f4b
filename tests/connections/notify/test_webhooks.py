"""Lifecycle webhooks (connections.notify.webhooks): endpoints in the admin with their events and write-only secrets,
the lifecycle events of connections, signed; retries until the receiver takes the event (once), a private address
refused by the outbound policy; and a real worker retrying on its backoff schedule."""

import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from connections import services
from connections.engine import refresh
from connections.errors import ProviderError
from connections.models import WebhookEndpoint
from connections.notify import webhooks
from tests.conftest import authorize_and_store_token, shared_token
from tests.support.receiver import WebhookReceiver
from tests.support.waiting import wait_for


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(204).start()
    yield server
    server.stop()


def endpoint_form(url: str, *events: str, secret: str = "endpoint-s3cret") -> dict:  # noqa: S107 - a test value
    return {"name": "Ops chat", "url": url, "events": list(events), "secret": secret, "is_enabled": "on"}


@pytest.mark.django_db
def test_an_endpoint_is_added_in_the_admin_with_its_events_and_a_secret_never_shown(manager_client, receiver):
    response = manager_client.post("/admin/connections/webhookendpoint/add/", endpoint_form(receiver.url))
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint = WebhookEndpoint.objects.get(name="Ops chat")
    assert (endpoint.events, endpoint.secret) == ([], "endpoint-s3cret")
    page = manager_client.get(f"/admin/connections/webhookendpoint/{endpoint.pk}/change/").content.decode()
    assert "endpoint-s3cret" not in page and "Send test event" in page
    refused = manager_client.post("/admin/connections/webhookendpoint/add/", endpoint_form("http://example.com/x"))
    assert "must use https" in " ".join(refused.context["adminform"].form.errors["url"])


@pytest.mark.django_db
def test_send_test_event_delivers_a_signed_event_and_shows_how_it_went(
    manager_client, receiver, celery_eager, django_capture_on_commit_callbacks
):
    endpoint = WebhookEndpoint.objects.create(name="Ops", url=receiver.url, secret="endpoint-s3cret")
    with django_capture_on_commit_callbacks(execute=True):
        response = manager_client.post(f"/admin/connections/webhookendpoint/{endpoint.pk}/test/", follow=True)
    assert "A test event was queued for Ops" in response.content.decode()
    ((headers, body),) = receiver.received
    assert (
        headers["X-ControlRoom-Signature"] == "sha256=" + hmac.new(b"endpoint-s3cret", body, hashlib.sha256).hexdigest()
    )
    assert (json.loads(body)["event"], headers["X-ControlRoom-Event"]) == ("test", "test")
    endpoint.refresh_from_db()
    assert endpoint.last_status == "HTTP 204" and endpoint.last_delivery_at is not None
    viewer_page = manager_client.get(f"/admin/connections/webhookendpoint/{endpoint.pk}/change/").content.decode()
    assert "HTTP 204" in viewer_page


@pytest.mark.django_db
def test_a_receiver_that_fails_twice_gets_the_event_once_after_the_retries(
    make_connection, celery_eager, django_capture_on_commit_callbacks
):
    receiver = WebhookReceiver(500, 500, 200).start()
    try:
        WebhookEndpoint.objects.create(name="Flaky", url=receiver.url)
        with django_capture_on_commit_callbacks(execute=True):
            webhooks.event_emit("token.refresh_failing", make_connection(register=False), "Refreshing keeps failing.")
        assert len(receiver.received) == 3 and len(receiver.accepted) == 1
        deliveries = {headers["X-ControlRoom-Delivery"] for headers, _ in receiver.received}
        assert len(deliveries) == 1  # the same event each time: a receiver can tell a retry from a new one
    finally:
        receiver.stop()


@pytest.mark.django_db
def test_a_receiver_on_a_private_address_is_refused_when_the_guard_is_on(
    make_connection, celery_eager, django_capture_on_commit_callbacks, settings, caplog
):
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    endpoint = WebhookEndpoint.objects.create(name="Inside", url="https://10.255.255.1/hook")
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.event_emit("token.refresh_failing", make_connection(register=False), "m")
    endpoint.refresh_from_db()
    assert endpoint.last_status.startswith("not sent: Refused to call https://10.255.255.1")
    assert "private" in endpoint.last_status
    given_up = [r.getMessage() for r in caplog.records if "was given up" in r.getMessage()]
    assert len(given_up) == 1  # refused for good: not retried


@pytest.mark.django_db(transaction=True)
def test_connecting_and_disconnecting_send_their_events_to_the_endpoints_that_want_them(
    make_connection, manager_client, manager, authserver, celery_eager
):
    everything = WebhookEndpoint.objects.create(name="All", url="https://placeholder.invalid/")
    wanted = WebhookEndpoint.objects.create(name="Disconnects", url="https://placeholder.invalid/")
    wanted.events = ["connection.disconnected"]
    wanted.save()
    receivers = {name: WebhookReceiver(204).start() for name in ("All", "Disconnects")}
    try:
        for endpoint in (everything, wanted):
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=receivers[endpoint.name].url)
        connection = make_connection()
        authorize_and_store_token(manager_client, connection, authserver)
        services.connection_disconnect(connection=connection, actor=manager)
        events = {name: [json.loads(body)["event"] for _, body in r.received] for name, r in receivers.items()}
        assert events == {
            "All": ["connection.connected", "connection.disconnected"],
            "Disconnects": ["connection.disconnected"],
        }
    finally:
        for server in receivers.values():
            server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_retries_on_its_schedule_until_the_receiver_takes_the_event(
    make_stack, bot_connection, authserver
):
    # given a receiver that is down (answers 500) for its first two calls, and a worker
    receiver = WebhookReceiver(500, 500, 204).start()
    try:
        WebhookEndpoint.objects.create(name="Pager", url=receiver.url, events=["token.reauthorization_required"])
        stack = make_stack()
        stack.worker()
        # when the worker's refresh is rejected for good
        authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
        token = shared_token(bot_connection)
        stack.send_task("connections.tasks.refresh_token", token.pk, token.generation)
        # then the event is retried after about 5 and 10 seconds, and taken once
        wait_for(lambda: receiver.accepted, 60, "the receiver taking the event")
        assert len(receiver.received) == 3 and len(receiver.accepted) == 1, stack.logs()
        assert json.loads(receiver.accepted[0])["event"] == "token.reauthorization_required"
        with pytest.raises(ProviderError):  # and the token does wait for a person now
            refresh.token_refresh(token=shared_token(bot_connection), actor_label="test")
    finally:
        receiver.stop()
