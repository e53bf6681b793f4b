"""Provider quirks as fields of the provider type, each through connect → token → refresh against the loopback
authorization server behaving that way (and, where it applies, the same server without the field: no token):

- tokens_never_expire: a token answer without expires_in is kept with no expiry, and never scheduled;
- refresh_token_max_idle: a refresh token that dies when unused is refreshed before then, however long the
  access token lives;
- token_request_params / token_request_headers: what every token request must carry;
- token_response_fields: the answer's fields where the provider keeps them (Slack v2's authed_user);
- token_request_format: token and revocation requests as a JSON object (Zendesk's, monday.com's);
- client_auth_method: the client secret only in the body;
- refresh_url: refreshes at a URL of their own (Figma's, Adobe Sign's).
"""

from concurrent.futures import Future
from datetime import timedelta

import pytest
from django.utils import timezone

from connections import selectors, services
from connections.engine import batch as refresh_batch
from connections.engine import refresh, sweep
from connections.errors import ProviderError
from connections.models import Connection
from providers.models import Provider
from tests.conftest import authorize_and_store_token, get_token, shared_token

pytestmark = pytest.mark.django_db


def provider_type(**quirks) -> Provider:
    return Provider.objects.create(
        slug="quirky", name="Quirky", grant_types=["authorization_code", "client_credentials"], **quirks
    )


def claimed_at(now) -> list[int]:
    return [token_id for token_id, _ in sweep.token_refresh_claim_due(now=now)]


@pytest.mark.parametrize("never_expire", [True, False])
def test_tokens_that_never_expire_are_kept_without_an_expiry_and_never_refreshed(
    never_expire, make_connection, manager_client, authserver, bot
):
    # given a provider whose token answers carry no expires_in
    authserver.set_token_options(omit_expires_in=True)
    connection = make_connection(provider=provider_type(tokens_never_expire=never_expire))
    bot.invite(connection)
    token = authorize_and_store_token(manager_client, connection, authserver)
    if not never_expire:  # the control: without the quirk, the default lifetime is assumed and refreshed
        assert token.expires_at is not None and token.next_refresh_at is not None
        assert claimed_at(token.expires_at) == [token.pk]
        return
    # then the token has no expiry, nothing is scheduled, and it reads so
    assert (token.expires_at, token.next_refresh_at, token.refresh_due_at) == (None, None, None)
    assert str(selectors.token_status(token)) == "Connected, no expiry"
    assert claimed_at(timezone.now() + timedelta(days=3650)) == []
    # and bots get it, with no expiry
    body = get_token(bot.raw_key, connection.slug).json()
    assert (body["access_token"], body["expires_at"], body["expires_in"]) == (token.access_token, None, None)
    # a refresh asked for by hand still works, and keeps it so
    refreshed = refresh.token_refresh(token=shared_token(connection), actor_label="test")
    assert refreshed.access_token != token.access_token and refreshed.expires_at is None
    assert authserver.whoami(refreshed.access_token).status_code == 200


class InThisThread:
    """The batch's thread pool, run in the test's thread: no thread of the pool keeps a database session open."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


@pytest.mark.django_db(transaction=True)  # the worker's batch renews its database connection between tokens
def test_a_refresh_token_that_dies_when_idle_is_refreshed_before_it_would(
    make_connection, manager_client, authserver, monkeypatch
):
    monkeypatch.setattr(refresh_batch, "_threads", InThisThread)
    # given a provider whose access tokens live an hour (the loopback server's) and whose refresh tokens die
    # after ten minutes unused
    connection = make_connection(provider=provider_type(refresh_token_max_idle=600))
    before = timezone.now()
    token = authorize_and_store_token(manager_client, connection, authserver)
    # then the refresh is scheduled inside the margin before the ten minutes (at most half of them), not the hour
    assert before + timedelta(seconds=300) <= token.next_refresh_at <= timezone.now() + timedelta(seconds=600)
    assert token.expires_at >= before + timedelta(seconds=3500)
    # and the engine refreshes it then: claimed by the sweep, refreshed by a worker's batch
    due = sweep.token_refresh_claim_due(now=token.next_refresh_at)
    assert [token_id for token_id, _ in due] == [token.pk]
    refresh_batch.tokens_refresh(due, None)
    refreshed = shared_token(connection)
    assert refreshed.generation == token.generation + 1 and refreshed.refresh_token != token.refresh_token
    assert refreshed.next_refresh_at <= timezone.now() + timedelta(seconds=600)
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


# Token-request quirks: (the provider type's fields, how the loopback server behaves).
REQUEST_QUIRKS = {
    "a parameter every token request needs (Atlassian's audience)": (
        {"token_request_params": {"audience": "api.example.com"}},
        {"require_params": {"audience": "api.example.com"}},
    ),
    "a header every token request needs": (
        {"token_request_headers": {"X-Api-Version": "2"}},
        {"require_headers": {"X-Api-Version": "2"}},
    ),
    "the token nested in the answer (Slack v2's authed_user)": (
        {
            "token_response_fields": {
                name: f"authed_user.{name}" for name in ("access_token", "refresh_token", "expires_in", "scope")
            }
        },
        {"nest_under": "authed_user"},
    ),
    "token requests as a JSON object (Zendesk's)": ({"token_request_format": "json"}, {"json_body": True}),
    "the client secret in the body only": ({"client_auth_method": "body"}, {"client_auth": "post"}),
}


@pytest.mark.parametrize("quirk", REQUEST_QUIRKS)
@pytest.mark.parametrize("as_the_provider_says", [True, False])
def test_a_token_request_quirk_is_data_of_the_provider_type(
    quirk, as_the_provider_says, make_connection, manager_client, authserver
):
    fields, behaviour = REQUEST_QUIRKS[quirk]
    authserver.set_token_options(**behaviour)
    connection = make_connection(provider=provider_type(**(fields if as_the_provider_says else {})))
    if not as_the_provider_says:  # the control: without the field, the provider's answer is not a token
        with pytest.raises(AssertionError, match="Connect stored no token"):
            authorize_and_store_token(manager_client, connection, authserver)
        return
    token = authorize_and_store_token(manager_client, connection, authserver)
    assert token.refresh_token and token.expires_at is not None and token.scope == "read write"
    assert authserver.whoami(token.access_token).status_code == 200
    refreshed = refresh.token_refresh(token=shared_token(connection), actor_label="test")
    assert refreshed.access_token != token.access_token and refreshed.refresh_token != token.refresh_token
    assert authserver.whoami(refreshed.access_token).status_code == 200
    assert authserver.stats()["refresh_token_reuses"] == 0


@pytest.mark.parametrize("json_format", [True, False])
def test_revocation_is_sent_as_json_where_the_provider_takes_json(
    json_format, make_connection, manager_client, authserver
):
    authserver.set_token_options(json_body=True)
    connection = make_connection(provider=provider_type(token_request_format="json"))
    token = authorize_and_store_token(manager_client, connection, authserver)
    if not json_format:  # the control: the same revocation sent as a form is not taken
        Provider.objects.filter(slug="quirky").update(token_request_format="form")
        connection = Connection.objects.select_related("provider").get(pk=connection.pk)
    services.connection_disconnect(connection=connection, actor=None)
    assert authserver.stats()["revocations"] == 2  # the refresh token, then the access token
    assert authserver.whoami(token.access_token).status_code == (401 if json_format else 200)


@pytest.mark.parametrize("with_refresh_url", [True, False])
def test_refreshes_go_to_the_refresh_url_where_the_provider_has_one(
    with_refresh_url, make_connection, manager_client, authserver
):
    # given a provider that takes refreshes only at a URL of their own
    authserver.set_token_options(refresh_elsewhere=True)
    fields = {"refresh_url": authserver.refresh_url} if with_refresh_url else {}
    connection = make_connection(provider=provider_type(**fields))
    token = authorize_and_store_token(manager_client, connection, authserver)  # the code exchange, at the token URL
    if not with_refresh_url:  # the control: a refresh at the token URL is refused
        with pytest.raises(ProviderError, match=r"unsupported_grant_type|refresh at /o/refresh/"):
            refresh.token_refresh(token=shared_token(connection), actor_label="test")
        return
    refreshed = refresh.token_refresh(token=shared_token(connection), actor_label="test")
    assert refreshed.access_token != token.access_token and refreshed.refresh_token != token.refresh_token
    assert authserver.whoami(refreshed.access_token).status_code == 200
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"token_request_params": {"grant_type": "password"}}, "cannot set grant_type"),
        ({"token_request_params": {"device_code": "x", "headers": "y"}}, "cannot set device_code, headers"),
        ({"token_request_params": {"audience": 1}}, "names and text values"),
        ({"token_response_fields": {"acess_token": "a.b"}}, "maps some of access_token"),
        ({"token_response_fields": {"access_token": "authed_user..access_token"}}, "names joined by dots"),
    ],
)
def test_a_quirk_that_cannot_work_is_refused_when_the_provider_type_is_saved(fields, said):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match=said):
        Provider(slug="bad", name="Bad", grant_types=["authorization_code"], **fields).full_clean()
