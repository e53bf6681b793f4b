"""What the refresh engine does when the provider misbehaves, with a real worker and beat (sweeping every second)
against the loopback authorization server and its injected faults.

Transient faults (5xx, timeout, connection closed, HTML instead of JSON): the current token is served while it
is valid, the state is `refresh_failing`, retries back off instead of following every sweep, and the token
recovers once the provider does. A rejected grant (invalid_grant) is permanent: `reauthorization_required`,
one notification, no more calls to the provider.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from connections.models import OAuthToken
from tests.conftest import get_token, shared_token
from tests.support.stack import Stack, in_threads, refresh_requests

pytestmark = pytest.mark.django_db(transaction=True)

BEAT_INTERVAL = 1
OUTBOUND_TIMEOUT = 3
BACKOFF_SWEEPS = 3  # sweeps watched while the token backs off (the first backoff lasts 7.5 to 15 s)
CALLERS = 8
EXPECTED_ERROR = {
    "status_500": "answered HTTP 500",
    "timeout": f"did not answer the token refresh within {OUTBOUND_TIMEOUT} seconds",
    "close": "Could not reach the provider",
    "html": "text/html instead of JSON",
}


@pytest.fixture
def stack(make_stack, notified_manager) -> Stack:
    """One worker and beat; a manager with an email address, so notifications have somewhere to go."""
    started = make_stack(BEAT_INTERVAL=BEAT_INTERVAL, OUTBOUND_TIMEOUT=OUTBOUND_TIMEOUT)
    started.worker()
    started.beat()
    return started


def make_due(token: OAuthToken, *, expires_in: int = 40) -> None:
    """Still valid for a while, but past its refresh time."""
    now = timezone.now()
    OAuthToken.objects.filter(pk=token.pk).update(
        expires_at=now + timedelta(seconds=expires_in), next_refresh_at=now - timedelta(seconds=1)
    )


def skip_backoff(token: OAuthToken) -> None:
    # To keep the test fast: the backoff time was observed (and asserted) already; move it to now instead of
    # waiting the 7.5 s to 30 min it lasts, so the next sweep retries.
    OAuthToken.objects.filter(pk=token.pk).update(next_refresh_at=timezone.now())


def fetch(token: OAuthToken) -> OAuthToken:
    return OAuthToken.objects.get(pk=token.pk)


def assert_serves_without_calling(authserver, bot, bot_connection, before, *, provider_still_accepts: bool) -> None:
    seen = refresh_requests(authserver)
    for params in ({}, {"min_validity": "0"}):
        response = get_token(bot.raw_key, bot_connection.slug, **params)
        assert response.status_code == 200, response.content
        assert response.json()["access_token"] == before.access_token
        assert 0 < response.json()["expires_in"] <= 40
    if provider_still_accepts:  # (a late-processed refresh replaces the access token at this provider)
        assert authserver.whoami(before.access_token).status_code == 200
    assert refresh_requests(authserver) == seen


def assert_sweeps_back_off(stack, authserver, token: OAuthToken) -> None:
    """The sweeps that run while the token backs off leave it alone: no refresh request until the backoff ends (on
    a slow machine it may end while they run: then one retry, not one per sweep)."""
    backoff_ends, requests_before = fetch(token).next_refresh_at, refresh_requests(authserver)
    stack.wait_for_sweeps(BACKOFF_SWEEPS)
    retries = refresh_requests(authserver) - requests_before
    report = f"{retries} refresh requests in {BACKOFF_SWEEPS} sweeps\n{stack.logs()}"
    assert retries == 0 or timezone.now() >= backoff_ends, report
    assert retries <= 1, report


@pytest.mark.parametrize("mode", ["status_500", "timeout", "close", "html"])
def test_a_transient_fault_backs_off_serves_the_valid_token_and_recovers(mode, stack, bot_connection, authserver, bot):
    # given a valid token due for refresh, and a provider failing every refresh with `mode`
    if mode == "timeout":
        # The provider processes the refresh and holds its answer until the test releases it: the client gives up
        # first. With rotation that would spend the stored refresh token (the rotation hazard, not this test's
        # subject): the provider here keeps refresh tokens, as Google does.
        authserver.set_token_options(omit_refresh_token_on_refresh=True)
        authserver.hold(["refresh_token"], stage="answer")
    else:
        authserver.set_fault(mode, grant_types=["refresh_token"])
    before = shared_token(bot_connection)
    make_due(before)

    # when the sweep's refresh fails
    failing = stack.wait_until(
        lambda: (token := fetch(before)).state == "refresh_failing" and token, 20, f"a refresh failing with {mode}"
    )

    # then the failure is recorded, the token kept, the next try scheduled later
    assert failing.consecutive_failures >= 1
    assert EXPECTED_ERROR[mode] in failing.last_error, failing.last_error
    assert (failing.access_token, failing.refresh_token, failing.generation) == (
        before.access_token,
        before.refresh_token,
        before.generation,
    )
    assert failing.next_refresh_at > timezone.now()
    assert failing.next_refresh_at - failing.last_error_at > timedelta(seconds=2 * BEAT_INTERVAL)
    assert failing.lease_owner == ""

    # and the token endpoint keeps serving the current token, without calling the provider again
    assert_serves_without_calling(authserver, bot, bot_connection, before, provider_still_accepts=mode != "timeout")
    # and the sweeps that follow respect the backoff: no refresh request per sweep
    assert_sweeps_back_off(stack, authserver, before)
    assert fetch(before).state == "refresh_failing"

    # when the provider heals and the backoff time comes
    # (the refreshes the client gave up on were processed before they were held: released, nothing of them lands
    # later to revoke the recovered token)
    authserver.release()
    authserver.clear_fault()
    requests_before = refresh_requests(authserver)
    skip_backoff(before)
    recovered = stack.wait_until(
        lambda: (token := fetch(before)).generation > before.generation and token, 20, "the refresh to recover"
    )

    # then the token is new and works, the state active, the failures forgotten
    assert refresh_requests(authserver) == requests_before + 1, stack.logs()
    assert (recovered.state, recovered.consecutive_failures, recovered.last_error) == ("active", 0, "")
    assert recovered.access_token != before.access_token
    assert recovered.expires_at > timezone.now() + timedelta(minutes=50)
    assert authserver.whoami(recovered.access_token).json()["username"] == "alice"
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 200 and response.json()["access_token"] == recovered.access_token
    # one or two failures are not a sustained failure (threshold 3), so nobody was bothered
    assert stack.mail_subjects() == []


def test_invalid_grant_needs_reauthorization_and_notifies_once(stack, bot_connection, authserver, bot):
    # given a due token whose grant the provider now rejects
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    before = shared_token(bot_connection)
    make_due(before)

    # when the sweep's task and several bots run into the rejection at about the same time
    answers = in_threads([lambda: get_token(bot.raw_key, bot_connection.slug) for _ in range(5)], workers=5)
    rejected = stack.wait_until(
        lambda: (token := fetch(before)).state == "reauthorization_required" and token,
        20,
        "the state to become reauthorization_required",
    )

    # then every bot is told to have the connection authorized again
    for answer in answers:
        assert answer.status_code == 409, answer.content
        assert answer.json()["error"] == "reauthorization_required"
    assert "invalid_grant" in rejected.last_error
    assert rejected.next_refresh_at is None and rejected.lease_owner == ""
    assert rejected.access_token == before.access_token and rejected.refresh_token == before.refresh_token

    # and from then on nothing reaches the provider: not the sweeps, not the bots, not even force_refresh
    seen = refresh_requests(authserver)
    for params in ({}, {"min_validity": "0"}, {"force_refresh": "true"}):
        response = get_token(bot.raw_key, bot_connection.slug, **params)
        assert response.status_code == 409, response.content
        assert response.json()["error"] == "reauthorization_required"
    stack.wait_for_sweeps(2)
    assert refresh_requests(authserver) == seen, stack.logs()
    assert fetch(before).state == "reauthorization_required"

    # and the managers got exactly one email about it
    mails = stack.mails()
    assert [str(mail["Subject"]) for mail in mails] == [f"[Control Room] {bot_connection} needs to be authorized again"]
    assert mails[0]["To"] == "ops@example.com"
    assert "invalid_grant" in mails[0].get_payload()


@pytest.mark.parametrize("mode", ["status_500", "invalid_grant"])
def test_concurrent_callers_share_one_failed_refresh(mode, make_stack, bot_connection, authserver, bot):
    # given a due token, a provider that fails refreshes slowly, and bots going through real web processes
    stack = make_stack(OUTBOUND_TIMEOUT=OUTBOUND_TIMEOUT)
    port = stack.web(workers=2, threads=8)
    url = f"http://127.0.0.1:{port}/api/v1/connections/{bot_connection.slug}/token"
    assert requests.get(url, timeout=30).status_code == 401  # warm up
    authserver.hold(["refresh_token"])  # the first refresh waits at the provider while the other bots ask
    authserver.set_fault(mode, grant_types=["refresh_token"])
    before = shared_token(bot_connection)
    make_due(before)

    # when bots ask at once (the token expires within their min_validity, so each wants a refresh)
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(
            in_threads,
            [lambda: requests.get(url, headers={"Authorization": f"Bearer {bot.raw_key}"}, timeout=60)] * CALLERS,
            CALLERS,
        )
        authserver.wait_held(1)
        authserver.release()
        answers = asked.result(timeout=90)

    # then single flight holds for failures too: one refresh request; the others wait and read its result
    statuses = sorted(answer.status_code for answer in answers)
    expected_status = 409 if mode == "invalid_grant" else 200
    assert statuses == [expected_status] * CALLERS, [answer.text[:200] for answer in answers]
    assert refresh_requests(authserver) == 1, (
        f"{refresh_requests(authserver)} refresh requests reached the provider for {CALLERS} concurrent callers "
        f"(expected 1: the waiters should read the failure their lease holder recorded)\n{stack.logs()}"
    )


def test_sustained_failure_and_recovery_each_notify_once(make_stack, notified_manager, bot_connection, authserver):
    # given notifications after two failures in a row, and a provider failing the next two refreshes
    stack = make_stack(
        BEAT_INTERVAL=BEAT_INTERVAL, OUTBOUND_TIMEOUT=OUTBOUND_TIMEOUT, REFRESH_FAILURE_NOTIFY_THRESHOLD=2
    )
    stack.worker()
    stack.beat()
    authserver.set_fault("status_500", count=2, grant_types=["refresh_token"])
    before = shared_token(bot_connection)
    make_due(before)

    # when one refresh fails: not yet a sustained failure
    stack.wait_until(lambda: fetch(before).consecutive_failures == 1, 20, "the first failure")
    # (an email goes out when the failure commits, before the task that recorded it ends)
    stack.wait_until(lambda: stack.tasks("refresh_tokens") >= 1, 10, "the failed refresh's task to end")
    assert stack.mail_subjects() == []

    # when the second fails
    skip_backoff(before)
    stack.wait_until(lambda: fetch(before).consecutive_failures == 2, 20, "the second failure")
    stack.wait_until(lambda: stack.mail_subjects(), 10, "the 'keeps failing' email")
    assert stack.mail_subjects() == [f"[Control Room] Refreshing {bot_connection} keeps failing"]

    # when the next refresh succeeds (the fault is used up)
    skip_backoff(before)
    recovered = stack.wait_until(
        lambda: (token := fetch(before)).generation > before.generation and token, 20, "the recovery"
    )
    stack.wait_until(lambda: len(stack.mail_subjects()) == 2, 10, "the 'works again' email")
    stack.wait_for_sweeps(2)  # (any further email would come from the recovering task, or one they queued)

    # then exactly one notice each way, and three refresh requests in all
    assert stack.mail_subjects() == [
        f"[Control Room] Refreshing {bot_connection} keeps failing",
        f"[Control Room] Refreshing {bot_connection} works again",
    ]
    assert all(mail["To"] == "ops@example.com" for mail in stack.mails())
    assert (recovered.state, recovered.consecutive_failures) == ("active", 0)
    assert refresh_requests(authserver) == 3, stack.logs()
