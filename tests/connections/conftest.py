"""Fixtures of the connections app's tests."""

from datetime import timedelta

import pytest
from django.utils import timezone

from connections.flows.attempts import connection_attempt_failed
from connections.models import Connection, OAuthToken, TokenState


def stored_token(connection: Connection, **fields: object) -> OAuthToken:
    expires_at = timezone.now() + timedelta(hours=1)
    return OAuthToken.objects.create(connection=connection, access_token="a", expires_at=expires_at, **fields)


@pytest.fixture
def every_kind_of_connection(make_connection, make_user) -> dict[str, Connection]:
    """Shared and user-specific connections in every status, and the odd ones: a token of the other kind left
    from before the token type was changed, a failed test, a disabled connection with a working token."""
    made: dict[str, Connection] = {}

    def shared(name: str, *token_states: str, **fields: object) -> None:
        made[name] = make_connection(register=False, **fields)
        for state in token_states:
            stored_token(made[name], state=state)

    def own(name: str, *token_states: str, **fields: object) -> None:
        made[name] = make_connection(register=False, token_type="user_specific", **fields)
        for state in token_states:
            stored_token(made[name], user=make_user(), state=state)

    shared("shared connected", TokenState.ACTIVE)
    shared("shared refresh failing", TokenState.REFRESH_FAILING)
    shared("shared reauthorization required", TokenState.REAUTHORIZATION_REQUIRED)
    shared("shared never connected")
    shared("shared disabled", TokenState.ACTIVE, is_enabled=False)
    shared("shared test failed", grant_type="client_credentials")
    connection_attempt_failed(connection=made["shared test failed"], message="Save and test: invalid_client.")
    made["shared test failed"].refresh_from_db()
    shared("shared, only a user's token left")
    stored_token(made["shared, only a user's token left"], user=make_user())
    own("user-specific, two users", TokenState.ACTIVE, TokenState.REAUTHORIZATION_REQUIRED)
    own("user-specific, nobody yet")
    own("user-specific disabled", TokenState.ACTIVE, is_enabled=False)
    own("user-specific, only a shared token left")
    stored_token(made["user-specific, only a shared token left"])
    return made
