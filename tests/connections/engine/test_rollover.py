"""Client secret rollover without an outage (connections.engine.rollover), against the loopback authorization
server: a next secret stored ahead is used once the server refuses the current one as invalid_client, and promoted
on its first success (audited); the one it replaced is dropped when an administrator confirms."""

import pytest

from connections.engine import rollover
from connections.engine.refresh import app_token_obtain
from connections.engine.store import connection_client_config
from connections.errors import ProviderError
from connections.models import AuditEvent, Connection, TokenState
from connections.oauth.client_auth import ClientConfig, next_credentials_config
from tests.conftest import refresh_shared_token, shared_token

NEXT_SECRET = "next-secret-9f2e-s3cr3t"


def _promotions(connection: Connection) -> list[str]:
    events = AuditEvent.objects.filter(connection=connection, action=AuditEvent.Action.CREDENTIAL_PROMOTE)
    return list(events.values_list("outcome", flat=True))


@pytest.mark.django_db
def test_a_secret_changed_at_the_provider_mid_run_costs_no_refresh(authorized_connection, authserver):
    # given a connected connection refreshed a few times, and its next secret stored ahead
    connection, old_secret = authorized_connection, authorized_connection.client_secret
    for _ in range(2):
        refresh_shared_token(connection)
    Connection.objects.filter(pk=connection.pk).update(next_client_secret=NEXT_SECRET)

    # when the secret is changed at the provider, and refreshes go on
    authserver.change_client_secret(connection.client_id, NEXT_SECRET)
    generations = [refresh_shared_token(connection).generation for _ in range(3)]

    # then every refresh succeeded, the server saw the old secret refused once, and the next one is now current
    token = shared_token(connection)
    assert (token.state, token.consecutive_failures, token.last_error) == (TokenState.ACTIVE, 0, "")
    assert generations == [4, 5, 6]
    stored = Connection.objects.get(pk=connection.pk)
    assert (stored.client_secret, stored.next_client_secret, stored.previous_client_secret) == (
        NEXT_SECRET,
        "",
        old_secret,
    )
    # and the promotion was audited once, and no refresh failed
    assert _promotions(connection) == ["success"]
    refreshes = AuditEvent.objects.filter(connection=connection, action=AuditEvent.Action.TOKEN_REFRESH)
    assert set(refreshes.values_list("outcome", flat=True)) == {"success"}
    assert refreshes.count() == 5


@pytest.mark.django_db
def test_without_a_next_secret_the_refused_secret_needs_a_person(authorized_connection, authserver):
    # given no next secret, and the secret changed at the provider
    authserver.change_client_secret(authorized_connection.client_id, NEXT_SECRET)
    # when a refresh is tried: refused as invalid_client, a permanent failure
    with pytest.raises(ProviderError) as refused:
        refresh_shared_token(authorized_connection)
    assert refused.value.error == "invalid_client"
    assert shared_token(authorized_connection).state == TokenState.REAUTHORIZATION_REQUIRED
    assert _promotions(authorized_connection) == []


@pytest.mark.django_db
def test_a_wrong_next_secret_is_not_promoted(authorized_connection, authserver):
    # given a next secret that is not the provider's new one either
    Connection.objects.filter(pk=authorized_connection.pk).update(next_client_secret="not-it")
    authserver.change_client_secret(authorized_connection.client_id, NEXT_SECRET)
    # when a refresh is tried
    with pytest.raises(ProviderError):
        refresh_shared_token(authorized_connection)
    # then nothing was promoted, and both stay as they were
    stored = Connection.objects.get(pk=authorized_connection.pk)
    assert (stored.client_secret, stored.next_client_secret) == (authorized_connection.client_secret, "not-it")
    assert _promotions(authorized_connection) == []


@pytest.mark.django_db
def test_a_client_credentials_token_is_obtained_with_the_next_secret(make_connection, authserver):
    connection = make_connection(grant_type="client_credentials", scopes="read")
    connection.next_client_secret = NEXT_SECRET
    connection.save()
    authserver.change_client_secret(connection.client_id, NEXT_SECRET)

    token = app_token_obtain(connection=connection)

    assert token.access_token and authserver.whoami(token.access_token).status_code == 200
    assert Connection.objects.get(pk=connection.pk).client_secret == NEXT_SECRET
    assert connection.client_secret == NEXT_SECRET  # the caller's copy too
    assert _promotions(connection) == ["success"]


@pytest.mark.django_db
def test_a_promotion_made_elsewhere_first_is_not_made_again(authorized_connection, manager):
    # given two processes that both succeeded with the next secret
    Connection.objects.filter(pk=authorized_connection.pk).update(next_client_secret=NEXT_SECRET)
    used = next_credentials_config(connection_client_config(Connection.objects.get(pk=authorized_connection.pk)))
    assert used is not None and used.client_secret == NEXT_SECRET
    # when both promote it: the second finds it done
    assert rollover.next_credentials_promote(connection=authorized_connection, used=used) is True
    assert rollover.next_credentials_promote(connection=authorized_connection, used=used) is False
    assert _promotions(authorized_connection) == ["success"]
    # and the administrator's confirmation drops the old secret, once, audited
    assert rollover.previous_credentials_drop(connection=authorized_connection, actor=manager) is True
    assert rollover.previous_credentials_drop(connection=authorized_connection, actor=manager) is False
    assert Connection.objects.get(pk=authorized_connection.pk).previous_client_secret == ""
    drops = AuditEvent.objects.filter(
        connection=authorized_connection, action=AuditEvent.Action.CREDENTIAL_PREVIOUS_DROP
    )
    assert list(drops.values_list("actor", flat=True)) == [manager.pk]


def test_the_next_credential_is_the_one_the_client_authenticates_with():
    base = {"client_id": "c", "authorization_url": "", "token_url": "https://p.example/token"}
    secret = ClientConfig(**base, client_secret="old", next_client_secret="new", next_private_key="KEY2")
    signing = ClientConfig(
        **base, client_secret="", client_auth_method="private_key_jwt", private_key="KEY1", next_private_key="KEY2"
    )
    assert next_credentials_config(secret).client_secret == "new"
    assert next_credentials_config(secret).private_key == ""
    assert next_credentials_config(signing).private_key == "KEY2"
    assert next_credentials_config(ClientConfig(**base, client_secret="old")) is None
    assert "new" not in repr(secret) and "KEY2" not in repr(signing)
