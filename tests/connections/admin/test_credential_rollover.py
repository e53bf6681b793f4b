"""The admin's part in a client secret rollover: the write-only Next client secret, the expiry dates, and the
confirmation that drops the secret a promoted next one replaced."""

from datetime import UTC, datetime

import pytest

from connections.engine import rollover
from connections.engine.store import connection_client_config
from connections.models import AuditEvent, Connection
from connections.oauth.client_auth import next_credentials_config
from tests.conftest import messages_of
from tests.connections.admin.test_connection_admin import _edit_form

pytestmark = pytest.mark.django_db

NEXT = "the-next-secret-4b1d"


def _change_url(connection: Connection) -> str:
    return f"/admin/connections/connection/{connection.pk}/change/"


def test_the_next_client_secret_is_write_only_and_its_expiry_kept(manager_client, make_connection):
    connection = make_connection(register=False)
    # when the administrator enters a next secret and the expiry dates
    data = _edit_form(
        connection,
        next_client_secret=NEXT,
        client_secret_expires_at_0="2027-03-01",
        client_secret_expires_at_1="00:00:00",
        next_client_secret_expires_at_0="2029-03-01",
        next_client_secret_expires_at_1="00:00:00",
    )
    response = manager_client.post(_change_url(connection), data)
    assert response.status_code == 302, response.content.decode()[:3000]

    # then it is stored beside the current one, which is unchanged, and never shown again
    stored = Connection.objects.get(pk=connection.pk)
    assert (stored.client_secret, stored.next_client_secret) == (connection.client_secret, NEXT)
    assert stored.client_secret_expires_at == datetime(2027, 3, 1, tzinfo=UTC)
    assert stored.next_client_secret_expires_at == datetime(2029, 3, 1, tzinfo=UTC)
    page = manager_client.get(_change_url(connection)).content.decode()
    assert NEXT not in page and "Next client secret" in page and "Remove the stored next secret" in page
    assert AuditEvent.objects.filter(action="connection_update", detail__contains="next client secret (set)").exists()

    # and saving with the field blank keeps it; its Remove box removes it
    manager_client.post(_change_url(connection), _edit_form(connection))
    assert Connection.objects.get(pk=connection.pk).next_client_secret == NEXT
    manager_client.post(_change_url(connection), _edit_form(connection, clear_next_client_secret="on"))
    assert Connection.objects.get(pk=connection.pk).next_client_secret == ""


def test_a_next_private_key_that_cannot_sign_is_refused(manager_client, make_connection):
    connection = make_connection(register=False)
    response = manager_client.post(_change_url(connection), _edit_form(connection, next_private_key="not a key"))
    assert response.status_code == 200
    assert "No PEM private key found" in response.content.decode()
    assert Connection.objects.get(pk=connection.pk).next_private_key == ""


def test_the_administrator_confirms_a_rollover_and_the_previous_secret_is_dropped(
    manager_client, manager, make_connection
):
    # given a next secret promoted by its first success: the old one is kept
    connection = make_connection(register=False, next_client_secret=NEXT)
    old = connection.client_secret
    used = next_credentials_config(connection_client_config(connection))
    assert used is not None and rollover.next_credentials_promote(connection=connection, used=used)
    assert Connection.objects.get(pk=connection.pk).previous_client_secret == old
    page = manager_client.get(_change_url(connection)).content.decode()
    assert "Confirm rollover" in page and old not in page

    # when the administrator confirms
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/drop-previous/", follow=True)

    # then the old secret is gone, audited as theirs, and the button with it
    assert "Rollover confirmed" in " ".join(messages_of(response))
    assert Connection.objects.get(pk=connection.pk).previous_client_secret == ""
    drop = AuditEvent.objects.get(action=AuditEvent.Action.CREDENTIAL_PREVIOUS_DROP)
    assert drop.actor == manager
    assert "Confirm rollover" not in manager_client.get(_change_url(connection)).content.decode()


def test_confirming_needs_a_post_by_someone_who_may_change_it(client, make_user, make_connection):
    connection = make_connection(register=False, previous_client_secret="old-one")
    viewer = make_user("viewer", perms=("view_connections",), staff=True)
    client.force_login(viewer)
    response = client.post(f"/admin/connections/connection/{connection.pk}/drop-previous/")
    assert response.status_code == 403
    assert Connection.objects.get(pk=connection.pk).previous_client_secret == "old-one"
