"""Fixtures of the token endpoint's tests: a bot runner in a role with its key, and a connection it may use."""

import pytest
from django.contrib.auth.models import Group

from connections.bot_keys import bot_key_create
from tests.conftest import connect


@pytest.fixture
def bot(make_user):
    """A bot runner in a role, and its key."""
    role = Group.objects.create(name="Finance bots")
    user = make_user("finance-bot", roles=(role,))
    key, raw = bot_key_create(user=user, name="finance runner")
    return user, role, key, raw


@pytest.fixture
def connected(make_connection, manager_client, authserver, bot):
    """A shared authorization-code connection, authorized, and invited to the bot's role."""
    connection = make_connection()
    authserver.set_token_extra({"instance_url": "https://acme.my.example"})
    manager_client.get(connect(manager_client, connection, authserver))
    authserver.set_token_extra({})
    connection.roles.add(bot[1])
    return connection
