"""GET /api/v1/connections/<slug>/token: every answer of the contract, against the real loopback server."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from connections.audit import events as audit
from connections.cache import token_cache
from connections.endpoint.bot_keys import bot_key_create
from connections.models import AuditEvent, BotKey, OAuthToken
from tests.conftest import authorize_and_store_token, get_token, refresh_shared_token, shared_token
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db


def _error(response) -> str:
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    return body["error"]


def test_a_bot_gets_a_valid_token(bot_connection, bot, authserver):
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    token = shared_token(bot_connection)
    assert body == {
        "connection": bot_connection.slug,
        "access_token": token.access_token,
        "token_type": "Bearer",
        "expires_at": token.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_in": body["expires_in"],
        "scope": "read write",
        "extra": {"instance_url": "https://acme.my.example"},
    }
    assert 3500 < body["expires_in"] <= 3600
    assert token.refresh_token not in response.content.decode()
    assert bot_connection.client_secret not in response.content.decode()
    assert authserver.whoami(body["access_token"]).status_code == 200
    # written by the process's next report (connections.cache.token_cache), not in the request
    assert not AuditEvent.objects.filter(action="token_request").exists()
    assert token_cache.report()
    event = AuditEvent.objects.filter(action="token_request").latest("id")
    assert (event.outcome, event.connection, event.remote_addr) == ("success", bot_connection, "127.0.0.1")
    assert "finance-bot" in event.actor_label and token.access_token not in event.detail
    assert BotKey.objects.get(pk=bot.key.pk).last_used_at is not None


def test_min_validity_refreshes_a_token_that_expires_too_soon(bot_connection, bot, authserver):
    OAuthToken.objects.filter(connection=bot_connection).update(expires_at=timezone.now() + timedelta(seconds=30))
    before = shared_token(bot_connection)
    response = get_token(bot.raw_key, bot_connection.slug, min_validity="60")
    assert response.status_code == 200
    assert response.json()["access_token"] != before.access_token
    assert authserver.stats()["token_requests"]["refresh_token"] == 1
    # The same call with a lower bar takes the token as it is.
    assert (
        get_token(bot.raw_key, bot_connection.slug, min_validity="10").json()["access_token"]
        == response.json()["access_token"]
    )
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


def test_force_refresh(bot_connection, bot, authserver):
    first = get_token(bot.raw_key, bot_connection.slug).json()["access_token"]
    second = get_token(bot.raw_key, bot_connection.slug, force_refresh="true").json()["access_token"]
    assert first != second and authserver.whoami(second).status_code == 200


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "Bearer"),
        ("Basic Zm9vOmJhcg==", "Bearer"),
        ("Bearer crk_000000000000_nope", "not valid"),
        ("Bearer not-even-a-key", "not valid"),
    ],
)
def test_invalid_keys_get_401(bot_connection, header, detail):
    headers = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().get(f"/api/v1/connections/{bot_connection.slug}/token", **headers)
    assert response.status_code == 401 and _error(response) == "invalid_key"
    assert detail in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert AuditEvent.objects.filter(action="token_request", outcome="failure", actor_label="unknown key").exists()


def test_revoked_expired_and_deactivated_keys_get_401(bot_connection, bot):
    user, key, raw = bot.user, bot.key, bot.raw_key
    key.revoked_at = timezone.now()
    key.save()
    assert "revoked" in get_token(raw, bot_connection.slug).json()["detail"]
    key.revoked_at, key.expires_at = None, timezone.now() - timedelta(seconds=1)
    key.save()
    assert "expired" in get_token(raw, bot_connection.slug).json()["detail"]
    key.expires_at = None
    key.save()
    user.is_active = False
    user.save()
    response = get_token(raw, bot_connection.slug)
    assert response.status_code == 401 and "deactivated" in response.json()["detail"]


def test_a_tampered_key_is_refused(bot_connection, bot):
    raw = bot.raw_key
    assert get_token(raw[:-1] + ("A" if raw[-1] != "A" else "B"), bot_connection.slug).status_code == 401


def test_forbidden_without_an_invited_role(make_connection, bot):
    connection = make_connection(register=False)
    response = get_token(bot.raw_key, connection.slug)
    assert response.status_code == 403 and _error(response) == "forbidden"


def test_disabled_connection_is_forbidden(bot_connection, bot):
    bot_connection.is_enabled = False
    bot_connection.save()
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 403 and "disabled" in response.json()["detail"]


def test_unknown_connection_is_404(bot):
    response = get_token(bot.raw_key, "no-such-connection")
    assert response.status_code == 404 and _error(response) == "not_found"


def test_never_authorized_is_409_not_connected(make_connection, bot):
    connection = make_connection(register=False)
    connection.roles.add(bot.role)
    response = get_token(bot.raw_key, connection.slug)
    assert response.status_code == 409 and _error(response) == "not_connected"


def test_rejected_refresh_token_is_409_reauthorization_required(bot_connection, bot, authserver):
    OAuthToken.objects.filter(connection=bot_connection).update(expires_at=timezone.now() - timedelta(seconds=5))
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 409 and _error(response) == "reauthorization_required"
    assert shared_token(bot_connection).state == "reauthorization_required"
    # From then on nothing is retried until someone authorizes again.
    assert get_token(bot.raw_key, bot_connection.slug).json()["error"] == "reauthorization_required"
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


def test_provider_down_and_token_expired_is_503_then_424_during_backoff(bot_connection, bot, authserver):
    OAuthToken.objects.filter(connection=bot_connection).update(expires_at=timezone.now() - timedelta(seconds=5))
    before = shared_token(bot_connection)
    authserver.set_fault("status_500")
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 503 and _error(response) == "provider_unavailable"
    assert int(response["Retry-After"]) >= 1
    after = shared_token(bot_connection)
    assert after.refresh_token == before.refresh_token and after.state == "refresh_failing"
    # While backing off, callers are told when to come back instead of hammering the provider.
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 424 and _error(response) == "refresh_backoff"
    assert int(response["Retry-After"]) >= 1
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


def test_a_timed_out_refresh_serves_the_valid_token_and_a_late_rotation_asks_for_reauthorization(
    bot_connection, bot, authserver
):
    OAuthToken.objects.filter(connection=bot_connection).update(expires_at=timezone.now() + timedelta(seconds=30))
    before = shared_token(bot_connection)
    # given a provider that answers the next refresh only after the client has given up (OUTBOUND_TIMEOUT 5 s)
    authserver.set_fault("timeout", count=1, delay=7, grant_types=["refresh_token"])
    # when a bot asks for more validity than the token has left
    response = get_token(bot.raw_key, bot_connection.slug, min_validity="60")
    # then it gets the current token, which still works, and the refresh token is kept
    assert response.status_code == 200 and response.json()["access_token"] == before.access_token
    after = shared_token(bot_connection)
    assert (after.state, after.refresh_token) == ("refresh_failing", before.refresh_token)
    # But this provider processes the abandoned refresh (rotating the refresh token, revoking the access token)
    # after the client gave up: the stored refresh token is spent, and no client can know the new one. The next
    # refresh says so, once, instead of failing transiently for ever.
    wait_for(lambda: authserver.whoami(before.access_token).status_code != 200, 15, "the abandoned refresh")
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    assert response.status_code == 409 and _error(response) == "reauthorization_required"
    assert shared_token(bot_connection).state == "reauthorization_required"
    assert authserver.stats()["refresh_token_reuses"] == 1


def test_rate_limit_per_key(bot_connection, bot, make_user, settings, one_rate_window):
    settings.TOKEN_RATE_LIMIT_PER_MINUTE = 2
    assert [get_token(bot.raw_key, bot_connection.slug).status_code for _ in range(2)] == [200, 200]
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 429 and _error(response) == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    # Another key of another bot is counted on its own.
    _, other = bot_key_create(user=make_user(roles=(bot.role,)), name="other")
    assert get_token(other, bot_connection.slug).status_code == 200


@pytest.mark.parametrize(
    "params",
    [{"min_validity": "-1"}, {"min_validity": "abc"}, {"min_validity": "999999"}, {"force_refresh": "maybe"}],
)
def test_bad_parameters_are_400(bot_connection, bot, params):
    response = get_token(bot.raw_key, bot_connection.slug, **params)
    assert response.status_code == 400 and _error(response) == "bad_request"


def test_only_get_is_allowed(bot_connection, bot):
    response = Client().post(
        f"/api/v1/connections/{bot_connection.slug}/token", HTTP_AUTHORIZATION=f"Bearer {bot.raw_key}"
    )
    assert response.status_code == 405


def test_user_specific_tokens_are_the_key_owners_own(make_connection, make_user, authserver):
    role = Group.objects.create(name="Agents")
    connection = make_connection(token_type="user_specific")
    connection.roles.add(role)
    agent, other = make_user("agent", roles=(role,)), make_user("other-agent", roles=(role,))
    browser = Client()
    browser.force_login(agent)
    authorize_and_store_token(browser, connection, authserver)
    _, agent_key = bot_key_create(user=agent, name="agent bot")
    _, other_key = bot_key_create(user=other, name="other bot")

    response = get_token(agent_key, connection.slug)
    assert response.json()["access_token"] == OAuthToken.objects.get(user=agent).access_token
    response = get_token(other_key, connection.slug)
    assert response.status_code == 409 and response.json()["error"] == "not_connected"
    assert "other-agent has not authorized" in response.json()["detail"]


def test_client_credentials_connections_fetch_their_first_token(make_connection, bot, authserver):
    connection = make_connection(grant_type="client_credentials", scopes="read")
    connection.roles.add(bot.role)
    response = get_token(bot.raw_key, connection.slug)
    assert response.status_code == 200
    assert authserver.whoami(response.json()["access_token"]).status_code == 200
    # Later calls reuse it until it is due.
    assert get_token(bot.raw_key, connection.slug).json()["access_token"] == response.json()["access_token"]
    assert authserver.stats()["token_requests"]["client_credentials"] == 1


# --- what a review found (the trust issue) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "odd",
    [
        {"expires_in": "3600.5"},
        {"expires_in": 3599.9},
        {"expires_in": 1e30},
        {"expires_in": True},
        {"scope": ["read", "write"]},
        {"scope": 42},
        {"scope": " ".join(f"scope-{n}" for n in range(400))},
        {"token_type": "bearer-" * 20},
        {"unknown": {"nested": ["a", "\x00"]}, "\x00": "nul"},
    ],
)
def test_an_odd_but_usable_token_answer_is_stored_and_its_rotated_refresh_token_kept(
    bot_connection, bot, authserver, odd
):
    # when the provider's refresh answer is odd but usable
    authserver.set_token_extra(odd)
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    # then the bot gets the new token, never a server error
    assert response.status_code == 200, response.content
    stored = shared_token(bot_connection)
    assert response.json()["access_token"] == stored.access_token and stored.generation == 2
    # and the refresh token the provider rotated to is the one kept: the next refresh works with it
    authserver.set_token_extra({})
    assert refresh_shared_token(bot_connection).generation == 3
    assert authserver.stats()["refresh_token_reuses"] == 0


def test_a_rotated_refresh_token_is_kept_even_when_the_rest_of_the_answer_is_unusable(bot_connection, bot, authserver):
    # when the provider rotates the refresh token but sends no usable access token with it
    authserver.set_token_extra({"access_token": None})
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    # then the forced refresh says it failed (the current token is still valid: asked for without force, it is
    # served), the failure noted
    assert response.status_code == 503 and _error(response) == "provider_unavailable", response.content
    assert (
        get_token(bot.raw_key, bot_connection.slug).json()["access_token"] == shared_token(bot_connection).access_token
    )
    assert shared_token(bot_connection).state == "refresh_failing"
    # and the rotated refresh token was kept: the next refresh works, no spent token presented
    authserver.set_token_extra({})
    assert refresh_shared_token(bot_connection).state == "active"
    assert authserver.stats()["refresh_token_reuses"] == 0


def test_a_providers_error_description_is_capped_wherever_it_goes(bot_connection, bot, authserver, mailoutbox):
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"], description="tell-" * 2000)
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    assert _error(response) == "reauthorization_required"
    token = shared_token(bot_connection)
    assert "tell-tell-" in token.last_error
    assert len(token.last_error) <= 400 and len(response.json()["detail"]) <= 600
    assert all(len(detail) <= 800 for detail in AuditEvent.objects.values_list("detail", flat=True))


def test_a_forced_refresh_that_fails_says_so_and_until_when_the_current_token_is_valid(bot_connection, bot, authserver):
    # given a connected token, and a provider that is down
    token = shared_token(bot_connection)
    authserver.set_fault("status_500", grant_types=["refresh_token"])
    # when a bot whose token was just refused forces a refresh
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    # then it is told the refresh failed, when to ask again, and until when the token it has is valid
    assert response.status_code == 503 and _error(response) == "provider_unavailable", response.content
    assert int(response["Retry-After"]) >= 1
    assert f"valid until {token.expires_at:%Y-%m-%dT%H:%M:%SZ}" in response.json()["detail"]
    assert "without force_refresh" in response.json()["detail"]
    # and asked without force_refresh, it gets the current token meanwhile
    again = get_token(bot.raw_key, bot_connection.slug)
    assert again.status_code == 200 and again.json()["access_token"] == token.access_token


def test_force_refresh_asks_the_provider_even_during_backoff(bot_connection, bot, authserver):
    # given a refresh that failed a moment ago (a provider 500): the token is in backoff, still valid
    authserver.set_fault("status_500", count=1, grant_types=["refresh_token"])
    assert get_token(bot.raw_key, bot_connection.slug, force_refresh="true").status_code == 503
    assert shared_token(bot_connection).state == "refresh_failing"
    # when the provider now rejects the grant and a bot forces a refresh (its token was just refused)
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    # then the provider was asked, and its answer is the bot's
    assert _error(response) == "reauthorization_required", response.json()
    assert authserver.stats()["token_requests"]["refresh_token"] == 2


def test_force_refresh_during_backoff_gets_a_new_token_once_the_provider_works(bot_connection, bot, authserver):
    authserver.set_fault("status_500", count=1, grant_types=["refresh_token"])
    old = shared_token(bot_connection).access_token
    assert get_token(bot.raw_key, bot_connection.slug, force_refresh="true").status_code == 503
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    assert response.status_code == 200 and response.json()["access_token"] != old
    assert shared_token(bot_connection).state == "active"


def _wrong_key_from(address: str, n: int, slug: str):
    return Client().get(
        f"/api/v1/connections/{slug}/token", HTTP_AUTHORIZATION=f"Bearer crk_{n:012x}_guess", REMOTE_ADDR=address
    )


def test_failed_authentications_from_one_ipv6_64_count_as_one_address(bot_connection, settings, one_rate_window):
    settings.TOKEN_AUTH_FAILURES_PER_MINUTE = 10
    # when 200 wrong keys come from 200 addresses of one IPv6 /64
    answers = [_wrong_key_from(f"2001:db8:1:2::{n:x}", n, bot_connection.slug) for n in range(1, 201)]
    # then they count as one address: ten are told the key is wrong, the rest to slow down
    assert [answer.status_code for answer in answers] == [401] * 10 + [429] * 190
    # and the audit log holds a few one by one, and once the minute is over one event counts them all
    one_by_one = AuditEvent.objects.filter(action="token_request", outcome="failure")
    assert one_by_one.count() == settings.AUTH_FAILURES_AUDITED_ONE_BY_ONE
    audit.audit_failed_authentications_summarize(now=timezone.now() + timedelta(seconds=61))
    summary = AuditEvent.objects.get(action="authentication_failures")
    assert "200 failed" in summary.detail and "from 2001:db8:1:2::/64 " in summary.detail, summary.detail
    # while another /64 is counted on its own
    assert _wrong_key_from("2001:db8:1:3::1", 999, bot_connection.slug).status_code == 401


def test_failed_authentications_from_many_addresses_are_audited_one_by_one_only_up_to_a_cap(
    bot_connection, settings, one_rate_window
):
    settings.AUTH_FAILURES_AUDITED_PER_MINUTE = 7
    # when 4 addresses each try 3 wrong keys (each within the 5 audited one by one per address)
    for n in range(12):
        assert _wrong_key_from(f"192.0.2.{n % 4 + 1}", n, bot_connection.slug).status_code == 401
    # then only the first 7 of the minute are rows of their own
    assert AuditEvent.objects.filter(action="token_request", outcome="failure").count() == 7
    # and every failure is accounted for: the addresses past the cap get their minute's count when it is over
    audit.audit_failed_authentications_summarize(now=timezone.now() + timedelta(seconds=61))
    summaries = AuditEvent.objects.filter(action="authentication_failures")
    assert summaries.count() >= 1
    assert all(summary.detail.startswith("3 failed authentications") for summary in summaries)


def test_failed_authentications_are_throttled_per_address_and_audited_in_aggregate(
    bot_connection, bot, settings, one_rate_window
):
    settings.TOKEN_AUTH_FAILURES_PER_MINUTE = 10
    # when someone without a key tries 40 times from one address
    answers = [get_token(f"crk_{n:012x}_guess", bot_connection.slug) for n in range(40)]
    # then the first ten are told the key is wrong, the rest to slow down
    assert [answer.status_code for answer in answers] == [401] * 10 + [429] * 30
    assert _error(answers[-1]) == "rate_limited" and int(answers[-1]["Retry-After"]) >= 1
    # and the audit log holds a few of them one by one, not forty rows
    one_by_one = AuditEvent.objects.filter(action="token_request", outcome="failure")
    assert one_by_one.count() == settings.AUTH_FAILURES_AUDITED_ONE_BY_ONE
    # and a bot with a working key at the same address is still served
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    # and once the minute is over, one event counts them all
    audit.audit_failed_authentications_summarize(now=timezone.now() + timedelta(seconds=61))
    summary = AuditEvent.objects.get(action="authentication_failures")
    assert summary.remote_addr == "127.0.0.1" and "40 failed" in summary.detail, summary.detail
    audit.audit_failed_authentications_summarize(now=timezone.now() + timedelta(seconds=61))
    assert AuditEvent.objects.filter(action="authentication_failures").count() == 1
