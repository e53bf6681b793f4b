"""A refresh's result that the database fails to take right after the provider answered (the provider has spent the
old refresh token by then): written again on a fresh connection while the lease lasts; if it still cannot be,
the loss is said on /metrics, in an error log naming the connection (never the token) and, once the database
answers, on the token itself."""

import logging

import pytest
from django.db import OperationalError

from connections.engine import outcomes, store
from connections.models import OAuthToken, TokenState
from connections.oauth import client as oauth_client
from connections.ops import metrics
from tests.conftest import refresh_shared_token, shared_token

pytestmark = pytest.mark.django_db


def _failing_writes(monkeypatch, failures: int | None) -> list[int]:
    """The fenced write fails `failures` times (None: always) before it works, as a database that restarts does."""
    real, calls = store.Fence.update, []

    def update(self, **values):
        calls.append(1)
        if failures is None or len(calls) <= failures:
            raise OperationalError("server closed the connection unexpectedly")
        return real(self, **values)

    monkeypatch.setattr(store.Fence, "update", update)
    return calls


def test_a_result_the_database_refused_once_is_written_again_and_the_rotated_refresh_token_kept(
    authorized_connection, authserver, monkeypatch
):
    # given a database that refuses the refresh's write once
    calls = _failing_writes(monkeypatch, failures=1)
    before = shared_token(authorized_connection)
    # when the token is refreshed (the provider rotates its refresh token)
    refreshed = refresh_shared_token(authorized_connection)
    # then the result was written at the second try, and the rotated refresh token is the one stored
    assert len(calls) == 2
    stored = shared_token(authorized_connection)
    assert stored.generation == before.generation + 1 and stored.refresh_token != before.refresh_token
    assert refreshed.access_token == stored.access_token
    monkeypatch.undo()
    assert refresh_shared_token(authorized_connection).state == TokenState.ACTIVE  # the kept refresh token works
    assert authserver.stats()["refresh_token_reuses"] == 0


def test_a_result_the_database_never_takes_is_said_everywhere_but_in_the_token(
    authorized_connection, authserver, monkeypatch, settings, caplog
):
    # given a database that refuses every write for longer than the lease allows
    settings.OUTBOUND_TIMEOUT = 1
    _failing_writes(monkeypatch, failures=None)
    answers = []
    real_refresh = oauth_client.refresh
    monkeypatch.setattr(oauth_client, "refresh", lambda *a, **k: answers.append(real_refresh(*a, **k)) or answers[-1])
    lost = metrics.REFRESH_RESULTS_LOST.labels(provider=authorized_connection.provider.slug)._value.get()
    # when the token is refreshed
    with caplog.at_level(logging.ERROR), pytest.raises(OperationalError):
        refresh_shared_token(authorized_connection)
    # then /metrics counts it, and an error names the connection, never the token
    assert metrics.REFRESH_RESULTS_LOST.labels(provider=authorized_connection.provider.slug)._value.get() == lost + 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(authorized_connection.slug in message and "did not take its result" in message for message in errors)
    rotated = (
        [token for token in authserver.issued_refresh_tokens()] if hasattr(authserver, "issued_refresh_tokens") else []
    )
    assert not any(value in message for message in errors for value in rotated)
    # and once the database answers, the token says so and is refreshed at once
    monkeypatch.undo()
    outcomes.unstored_results_record()
    token = OAuthToken.objects.get(connection=authorized_connection)
    assert token.state == TokenState.REFRESH_FAILING
    assert "did not take its result" in token.last_error and token.next_refresh_at is not None
