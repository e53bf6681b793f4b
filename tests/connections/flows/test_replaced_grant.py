"""Re-authorizing replaces a grant; the replaced one is revoked at the provider only where the provider type says
revoking a refresh token ends that grant alone (Provider.revoke_replaced_grant). Against the loopback server both
ways: per token (RFC 7009, django-oauth-toolkit's own revocation), and ending every token of the person for the
client whichever one is revoked (revoke_whole_grant, as reported of Google), where revoking the replaced grant would
end the new one too."""

import logging

import pytest

from connections.engine.store import connection_client_config
from connections.errors import ProviderError
from connections.flows import device
from connections.models import Connection, DeviceAuthorization, OAuthToken, TokenState
from connections.oauth import client as oauth_client
from providers.models import Provider
from tests.conftest import PROVIDER_USER, authorize_and_store_token, refresh_shared_token, shared_token
from tests.support.authserver import AuthServer

pytestmark = pytest.mark.django_db

LEFT = "as revoking it could end the grant in use too"
Status = DeviceAuthorization.Status


def provider_type(*, revoke_replaced_grant: bool) -> Provider:
    return Provider.objects.create(
        slug="replacing",
        name="Replacing",
        grant_types=["authorization_code", "device_code"],
        revoke_replaced_grant=revoke_replaced_grant,
    )


def reauthorized(make_connection, manager_client, authserver: AuthServer, *, revoke_replaced_grant: bool):
    """A connection authorized twice at the loopback server: (the connection, the first token, the second)."""
    connection = make_connection(provider=provider_type(revoke_replaced_grant=revoke_replaced_grant))
    first = authorize_and_store_token(manager_client, connection, authserver)
    second = authorize_and_store_token(manager_client, connection, authserver)
    assert second.refresh_token != first.refresh_token  # a new grant, not the same one handed out again
    return connection, first, second


def refresh_at_the_provider(connection: Connection, refresh_token: str) -> None:
    """Show the provider a refresh token, as the engine would (raises ProviderError when it is refused)."""
    oauth_client.refresh(connection_client_config(connection), refresh_token=refresh_token)


def test_where_revoking_ends_the_whole_grant_the_replaced_one_is_left_and_the_new_one_works(
    make_connection, manager_client, authserver, caplog
):
    # given a provider that ends every token of the person for the client whichever one is revoked, and a provider
    # type that does not revoke replaced grants
    authserver.set_token_options(revoke_whole_grant=True)
    # when the connection is authorized again
    with caplog.at_level(logging.INFO, logger="connections.engine.store"):
        connection, first, second = reauthorized(
            make_connection, manager_client, authserver, revoke_replaced_grant=False
        )
    # then the replaced refresh token is not revoked, and it says why
    assert authserver.stats()["revocations"] == 0
    assert authserver.live_grants(connection.client_id)["refresh_tokens"] == 2
    assert f"{connection.slug}'s new authorization replaced" in caplog.text and LEFT in caplog.text
    # and the new grant works: its access token, and a refresh
    assert authserver.whoami(second.access_token).json()["username"] == PROVIDER_USER[0]
    refreshed = refresh_shared_token(connection)
    assert refreshed.refresh_token != second.refresh_token
    assert authserver.whoami(refreshed.access_token).status_code == 200
    assert shared_token(connection).state == TokenState.ACTIVE
    # and the provider still takes the replaced refresh token: it was left, not revoked
    refresh_at_the_provider(connection, first.refresh_token)


def test_where_revoking_is_per_token_the_replaced_grant_is_revoked_and_the_new_one_works(
    make_connection, manager_client, authserver
):
    # given a provider whose revocation ends only the token revoked (and those issued from it), and a provider type
    # that says so
    # when the connection is authorized again
    connection, first, second = reauthorized(make_connection, manager_client, authserver, revoke_replaced_grant=True)
    # then the new grant is the only one the provider still honours, and it works
    assert authserver.stats()["revocations"] == 1
    assert authserver.live_grants(connection.client_id)["refresh_tokens"] == 1
    assert authserver.whoami(second.access_token).status_code == 200
    assert authserver.whoami(refresh_shared_token(connection).access_token).status_code == 200
    # and the replaced refresh token is refused there
    with pytest.raises(ProviderError) as refused:
        refresh_at_the_provider(connection, first.refresh_token)
    assert refused.value.error == "invalid_grant"


def test_the_control_revoking_the_replaced_grant_where_that_ends_the_whole_grant_ends_the_new_one(
    make_connection, manager_client, authserver
):
    # given a provider that ends every token of the person for the client whichever one is revoked, and a provider
    # type that (wrongly for it) revokes replaced grants
    authserver.set_token_options(revoke_whole_grant=True)
    # when the connection is authorized again
    connection, _first, second = reauthorized(make_connection, manager_client, authserver, revoke_replaced_grant=True)
    # then the new grant is ended with the old one: what the provider type's field is there to prevent
    assert authserver.stats()["revocations"] == 1
    assert authserver.whoami(second.access_token).status_code == 401
    with pytest.raises(ProviderError) as refused:
        refresh_shared_token(connection)
    assert refused.value.error == "invalid_grant"
    assert shared_token(connection).state == TokenState.REAUTHORIZATION_REQUIRED


@pytest.mark.parametrize("revoke_replaced_grant", [False, True])
def test_a_device_authorization_replaces_a_grant_by_the_same_rule(
    revoke_replaced_grant, make_connection, manager, authserver
):
    # given a connection with the device code grant, authorized once, at a provider that ends whole grants
    authserver.set_token_options(revoke_whole_grant=True)
    connection = make_connection(
        grant_type="device_code", provider=provider_type(revoke_replaced_grant=revoke_replaced_grant)
    )
    first = approved_on_a_device(connection, manager, authserver)
    # when it is authorized again on a device
    second = approved_on_a_device(connection, manager, authserver)
    # then the new grant works where the replaced one is left (and, the control, dies where it is revoked)
    assert second.refresh_token != first.refresh_token
    assert authserver.stats()["revocations"] == (1 if revoke_replaced_grant else 0)
    assert authserver.whoami(second.access_token).status_code == (401 if revoke_replaced_grant else 200)


def approved_on_a_device(connection: Connection, manager, authserver: AuthServer) -> OAuthToken:
    started = device.device_authorization_start(connection=connection, user=manager)
    authserver.approve_device(started.user_code, *PROVIDER_USER)
    assert device.device_authorization_poll(started.pk) is None
    started.refresh_from_db()
    assert started.status == Status.APPROVED, started.message
    token = shared_token(connection)
    assert token is not None
    return token
