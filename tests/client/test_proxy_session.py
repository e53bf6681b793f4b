"""ControlRoom(...).session(slug) and controlroom-proxy: a bot calls its connection's API through the live server's
proxy, and never holds the token."""

import subprocess
import sys

import pytest
from controlroom_client import ConfigurationError, ControlRoom

from tests.client.test_cli import cli_env
from tests.conftest import shared_token
from tests.support.resource import Answer, resource_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api():
    with resource_server() as server:
        yield server


@pytest.fixture
def proxied(bot_connection, api):
    bot_connection.api_base_url = api.url + "/base"
    bot_connection.save()
    return bot_connection


def test_a_session_sends_relative_urls_through_the_proxy(live_server, bot, proxied, api):
    api.answers["/base/services/data"] = Answer(200, [("Content-Type", "application/json")], b'{"versions": []}')
    with ControlRoom(live_server.url, bot.raw_key) as client, client.session(proxied.slug) as session:
        response = session.get("/services/data", params={"q": "1"})
        posted = session.post("items", json={"name": "x"})
    assert response.status_code == 200 and response.json() == {"versions": []}
    assert posted.status_code == 200
    first, second = api.received
    assert first.path == "/base/services/data?q=1"
    assert first.header("Authorization") == f"Bearer {shared_token(proxied).access_token}"
    assert (second.method, second.path, second.body_size) == ("POST", "/base/items", len(b'{"name": "x"}'))
    assert bot.raw_key not in repr(session)


def test_a_session_refuses_an_absolute_url_elsewhere(live_server, bot, proxied, api):
    with ControlRoom(live_server.url, bot.raw_key) as client, client.session(proxied.slug) as session:
        with pytest.raises(ConfigurationError):
            session.get("https://evil.example/steal")
        with pytest.raises(ConfigurationError):
            session.get("//evil.example/steal")
    assert api.received == []


def run_proxy_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "controlroom_client.proxy_cli", *args]
    return subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)


def test_the_cli_writes_the_apis_body(live_server, bot, proxied, api, tmp_path):
    env = cli_env(CONTROLROOM_URL=live_server.url, CONTROLROOM_KEY=bot.raw_key)
    api.answers["/base/v1.0/me"] = Answer(200, [("Content-Type", "application/json")], b'{"id": "me"}')
    result = run_proxy_cli(proxied.slug, "GET", "v1.0/me?$select=id", env=env)
    assert (result.returncode, result.stdout) == (0, b'{"id": "me"}'), result.stderr
    assert api.received[-1].path == "/base/v1.0/me?$select=id"
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    api.answers["/base/missing"] = Answer(404, [("Content-Type", "application/json")], b'{"error": "nope"}')
    result = run_proxy_cli(proxied.slug, "post", "missing", "-d", str(body), "-H", "X-Trace: 1", env=env)
    assert (result.returncode, result.stdout) == (8, b'{"error": "nope"}')
    assert (api.received[-1].method, api.received[-1].body_size, api.received[-1].header("X-Trace")) == ("POST", 8, "1")


def test_the_cli_reports_control_rooms_refusal(live_server, bot, proxied, api):
    env = cli_env(CONTROLROOM_URL=live_server.url, CONTROLROOM_KEY=bot.raw_key)
    result = run_proxy_cli("no-such-connection", "GET", "x", env=env)
    assert result.returncode == 13
    assert result.stderr.decode().startswith("controlroom-proxy: not_found (HTTP 404)")
    assert api.received == []
