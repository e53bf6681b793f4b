"""The API proxy's tests' loopback API, a connection calling it, and a proxied call as gunicorn hands it to Django."""

import pytest
from django.test import Client

from connections.models import Connection
from tests.support.resource import resource_server


@pytest.fixture
def api():
    with resource_server() as server:
        yield server


@pytest.fixture
def proxied(bot_connection, api) -> Connection:
    """The `bot_connection`, with the loopback API as its API base."""
    bot_connection.api_base_url = api.url + "/base"
    bot_connection.save()
    return bot_connection


def call(key: str | None, slug: str, path: str, method: str = "GET", raw: bool = True, **extra):
    """A proxied call as gunicorn hands it to Django: RAW_URI holds the request line's path as sent."""
    url = f"/api/v1/connections/{slug}/proxy/{path}"
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    if raw:
        headers["RAW_URI"] = url
    return Client().generic(method, url, **headers, **extra)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content
