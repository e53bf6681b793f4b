"""Fixtures of the token endpoint's tests: a bot runner in a role with its key, and a connection it may use."""

import pytest

from tests.conftest import connect
from tests.support.bots import Bot, make_bot


@pytest.fixture
def bot(db) -> Bot:
    """A bot runner in a role, and its key."""
    return make_bot("finance-bot", "Finance bots", "finance runner")


@pytest.fixture
def connected(make_connection, manager_client, authserver, bot):
    """A shared authorization-code connection, authorized, and invited to the bot's role."""
    connection = make_connection()
    authserver.set_token_extra({"instance_url": "https://acme.my.example"})
    manager_client.get(connect(manager_client, connection, authserver))
    authserver.set_token_extra({})
    bot.invite(connection)
    return connection
