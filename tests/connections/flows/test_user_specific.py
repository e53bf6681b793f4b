"""User-specific connections: each invited user authorizes their own token from My connections."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from connections import selectors
from connections.models import OAuthToken
from tests.conftest import authorize_and_store_token, callback_after_consent, messages_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def invited(make_connection, make_user):
    role = Group.objects.create(name="Sales bots")
    connection = make_connection(token_type="user_specific")
    connection.roles.add(role)
    bob = make_user("bob", roles=(role,))
    dave = make_user("dave", roles=(role,))
    return connection, bob, dave


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_invited_non_staff_user_authorizes_their_own_token(invited, authserver):
    connection, bob, _ = invited
    client = _client(bob)
    page = client.get("/connections/mine/").content.decode()
    assert connection.name in page and "Not connected" in page and "Authorize" in page

    response = client.get(callback_after_consent(client, connection, authserver))

    assert response["Location"] == "/connections/mine/"
    token = OAuthToken.objects.get(connection=connection)
    assert token.user == bob and token.authorized_by == bob
    assert authserver.whoami(token.access_token).status_code == 200
    page = client.get("/connections/mine/").content.decode()
    assert "Connected, expires in" in page and "Re-authorize" in page
    assert token.access_token not in page


def test_nobody_sees_or_uses_another_users_token(invited, authserver, make_connection):
    connection, bob, dave = invited
    bob_client, dave_client = _client(bob), _client(dave)
    authorize_and_store_token(bob_client, connection, authserver)

    dave_page = dave_client.get("/connections/mine/").content.decode()
    assert "Not connected" in dave_page
    assert selectors.token_for(connection, dave) is None

    authorize_and_store_token(dave_client, connection, authserver)
    bob_token, dave_token = (selectors.token_for(connection, user) for user in (bob, dave))
    assert bob_token.pk != dave_token.pk and bob_token.access_token != dave_token.access_token
    assert selectors.connection_status(connection).label == "2 users connected"

    # Disconnecting from My connections removes only one's own token.
    response = dave_client.post(f"/connections/mine/{connection.slug}/disconnect/")
    assert any("Disconnected" in text for text in messages_of(response))
    assert selectors.token_for(connection, dave) is None
    assert selectors.token_for(connection, bob) is not None
    assert authserver.whoami(bob_token.access_token).status_code == 200


def test_users_outside_invited_roles_see_nothing_and_cannot_authorize(invited, make_user, authserver):
    connection, _, _ = invited
    carol = make_user("carol", roles=(Group.objects.create(name="Other"),))
    client = _client(carol)
    assert connection.name not in client.get("/connections/mine/").content.decode()
    assert client.post(f"/oauth/connect/{connection.slug}/").status_code == 404
    assert not OAuthToken.objects.exists()


def test_shared_connections_are_not_listed_on_my_connections(invited, make_connection):
    connection, bob, _ = invited
    shared = make_connection(register=False)
    shared.roles.add(*bob.groups.all())
    page = _client(bob).get("/connections/mine/").content.decode()
    assert connection.name in page and shared.name not in page


def test_my_connections_requires_login():
    response = Client().get("/connections/mine/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_login_page_signs_in_a_non_staff_user(make_user):
    make_user("erin")
    client = Client()
    page = client.get("/accounts/login/?next=/connections/mine/")
    assert page.status_code == 200 and "Log in" in page.content.decode()
    response = client.post("/accounts/login/", {"username": "erin", "password": "pw", "next": "/connections/mine/"})
    assert response.status_code == 302 and response["Location"] == "/connections/mine/"
