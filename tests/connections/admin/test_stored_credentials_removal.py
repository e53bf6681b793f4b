"""A stored client secret or private key can be removed in the admin (a client that now signs, or is public), not
only replaced; the box is there only while one is stored, a value typed beside it wins, and the audit names the
removal, never a value."""

import pytest

from connections.models import AuditEvent, Connection
from tests.connections.admin.test_connection_admin import _edit_form
from tests.connections.oauth.test_assertions import KEYS, _pem

pytestmark = pytest.mark.django_db


def _change(client, connection: Connection, **overrides: str):
    return client.post(f"/admin/connections/connection/{connection.pk}/change/", _edit_form(connection, **overrides))


def test_the_remove_boxes_are_shown_only_while_something_is_stored(manager_client, make_connection):
    with_secret = make_connection(register=False)
    without = make_connection(register=False, client_secret="", grant_type="authorization_code_pkce")
    page = manager_client.get(f"/admin/connections/connection/{with_secret.pk}/change/").content.decode()
    assert 'name="clear_client_secret"' in page and 'name="clear_private_key"' not in page
    page = manager_client.get(f"/admin/connections/connection/{without.pk}/change/").content.decode()
    assert 'name="clear_client_secret"' not in page


def test_a_connection_that_now_signs_drops_its_secret(manager_client, make_connection):
    # given a connection with a secret, which moves to private_key_jwt
    connection = make_connection(register=False)
    response = _change(
        manager_client,
        connection,
        client_auth_method="private_key_jwt",
        private_key=_pem(KEYS["RS256"]),
        clear_client_secret="on",
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert connection.client_secret == "" and connection.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    detail = AuditEvent.objects.get(action="connection_update").detail
    assert "client secret (removed)" in detail and "private key (replaced)" in detail
    assert "BEGIN" not in detail


def test_a_secret_the_client_needs_cannot_be_removed(manager_client, make_connection):
    connection = make_connection(register=False)
    response = _change(manager_client, connection, clear_client_secret="on")
    assert response.status_code == 200
    assert "Enter the client secret" in str(response.context["adminform"].form.errors)
    connection.refresh_from_db()
    assert connection.client_secret  # kept


def test_a_typed_secret_wins_over_the_remove_box(manager_client, make_connection):
    connection = make_connection(register=False)
    _change(manager_client, connection, client_secret="a-new-secret-value", clear_client_secret="on")
    connection.refresh_from_db()
    assert connection.client_secret == "a-new-secret-value"


def test_a_private_key_no_longer_used_can_be_removed(manager_client, make_connection):
    connection = make_connection(register=False, private_key=_pem(KEYS["ES256"]))
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert 'name="clear_private_key"' in page
    response = _change(manager_client, connection, clear_private_key="on")
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert connection.private_key == "" and connection.client_secret
