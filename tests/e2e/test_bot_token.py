"""A bot fetches a token over real HTTP from the live server; the real authorization server accepts it."""

import pytest
import requests
from django.contrib.auth.models import Group

from connections.endpoint.bot_keys import bot_key_create
from tests.conftest import authorize_and_store_token

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_bot_key_fetches_a_token_that_the_provider_accepts(live_server, make_connection, manager_client, authserver):
    # given a connection authorized at the loopback server and a bot whose role is invited to it
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    role = Group.objects.create(name="Reporting bots")
    connection.roles.add(role)
    bot = role.user_set.create(username="reporting-bot")
    _, raw_key = bot_key_create(user=bot, name="reporting")
    url = f"{live_server.url}/api/v1/connections/{connection.slug}/token"

    # when the bot asks over HTTP, as a bot runner would
    response = requests.get(url, headers={"Authorization": f"Bearer {raw_key}"}, timeout=10)

    # then it gets a token that the provider's protected resource accepts
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()["access_token"]
    assert authserver.whoami(token).json()["username"] == "alice"

    # and a forced refresh gives a new token that works too, while the old refresh token is spent
    refreshed = requests.get(
        url, params={"force_refresh": "true"}, headers={"Authorization": f"Bearer {raw_key}"}, timeout=10
    )
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != token
    assert authserver.whoami(refreshed.json()["access_token"]).status_code == 200

    # and without the key there is nothing to be had
    assert requests.get(url, timeout=10).status_code == 401
