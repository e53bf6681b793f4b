"""What is kept of a token URL's answer (connections.oauth.answers): no token or secret a provider nests in it, at
any depth, reaches a bot's JSON or the database in clear; the container of a field a preset moves goes with it."""

import json

import pytest
import requests
from django.db import connection as db_connection

from connections.models import OAuthToken
from connections.oauth.answers import TokenAnswers, token_response_of, without_secrets
from providers.models import Provider
from tests.conftest import authorize_and_store_token, get_token, shared_token

pytestmark = pytest.mark.django_db

NESTED_SECRETS = ["xoxp-user-token", "xoxe-user-refresh", "deep-refresh", "https://hooks.example/T0/B0/secret"]


def _answer(body: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    return response


def _nesting(access_token: str) -> dict:
    """A token answer shaped as Slack's oauth.v2.access (a bot token at the top, the installing user's tokens under
    authed_user, a secret webhook URL), with a refresh token nested deeper still."""
    return {
        "access_token": access_token,
        "token_type": "bot",
        "scope": "chat:write",
        "team": {"id": "T0", "name": "Acme"},
        "authed_user": {"id": "U1", "scope": "users:read", "access_token": "xoxp-user-token",
                        "refresh_token": "xoxe-user-refresh", "token_type": "user"},
        "incoming_webhook": {"channel": "#ops", "url": "https://hooks.example/T0/B0/secret"},
        "deep": {"list": [{"refresh_token": "deep-refresh", "kept": 1}]},
    }  # fmt: skip


def _kept(fields: dict[str, str], body: dict) -> dict:
    """What a session with the provider type's token_response_fields makes of the answer."""
    return token_response_of(json.loads(TokenAnswers(fields)(_answer(body)).content))


@pytest.mark.parametrize("slug", ["slack", "slack-user", "generic"])
def test_no_nested_token_is_kept_whatever_the_preset_moves(slug):
    fields = {} if slug == "generic" else Provider.objects.get(slug=slug).token_response_fields
    response = _kept(fields, _nesting("xoxb-bot-token"))
    kept = json.dumps(response.extra)
    assert not [secret for secret in NESTED_SECRETS if secret in kept], kept
    assert response.extra["team"] == {"id": "T0", "name": "Acme"}  # what is not a secret stays
    if slug == "slack-user":  # the user's token was moved to the top, its container dropped
        assert response.access_token == "xoxp-user-token" and "authed_user" not in response.extra
    else:
        assert response.access_token == "xoxb-bot-token"


def test_every_preset_that_moves_answer_fields_drops_their_containers():
    presets = [provider for provider in Provider.objects.all() if provider.token_response_fields]
    assert presets  # the catalog has some (Slack's user token)
    for provider in presets:
        containers = {path.split(".")[0] for path in provider.token_response_fields.values() if "." in path}
        body = {container: {"access_token": "nested-a", "refresh_token": "nested-r"} for container in containers}
        response = _kept(provider.token_response_fields, {"access_token": "top", **body})
        assert not containers & set(response.extra), provider.slug
        assert "nested-r" not in json.dumps(response.extra), provider.slug


def test_secret_fields_go_at_every_depth():
    value = {"a": [{"client_secret": "x", "b": {"id_token": "y", "keep": 1}}], "password": "z", "n": 2}
    assert without_secrets(value) == {"a": [{"b": {"keep": 1}}], "n": 2}


def test_a_bot_never_gets_a_nested_token_and_the_row_holds_none_in_clear(
    make_connection, manager_client, authserver, bot
):
    # given a provider whose token answers nest tokens and a secret URL beside the standard fields
    extra = {key: value for key, value in _nesting("ignored").items() if key not in ("access_token", "token_type")}
    authserver.set_token_extra(extra)
    connection = make_connection()
    bot.invite(connection)
    authorize_and_store_token(manager_client, connection, authserver)
    # when a bot asks for the token
    body = get_token(bot.raw_key, connection.slug).json()
    # then its JSON holds the token it asked for and the answer's other fields, and no nested secret
    assert body["access_token"] == shared_token(connection).access_token
    assert body["extra"]["team"] == {"id": "T0", "name": "Acme"}
    assert not [secret for secret in NESTED_SECRETS if secret in json.dumps(body)], body
    # and the database row, read raw, holds neither those secrets nor the other fields in clear
    with db_connection.cursor() as cursor:
        cursor.execute(f"SELECT extra FROM {OAuthToken._meta.db_table} WHERE connection_id = %s", [connection.pk])  # noqa: S608
        raw = bytes(cursor.fetchone()[0])
    assert b"Acme" not in raw and not [secret for secret in NESTED_SECRETS if secret.encode() in raw]
