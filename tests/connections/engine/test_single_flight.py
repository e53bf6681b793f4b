"""Single flight: an expired token asked for at once by two workers, beat and 50 bots through three web
processes costs the provider exactly one refresh request, and everybody gets its result."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from connections.models import OAuthToken
from tests.conftest import shared_token
from tests.support.stack import in_threads, refresh_requests

pytestmark = pytest.mark.django_db(transaction=True)

CALLERS = 50


def test_fifty_callers_two_workers_and_beat_cost_one_refresh(make_stack, bot_connection, authserver, bot):
    # given one connected token, and the whole deployment: beat sweeping every second, two worker processes,
    # gunicorn with 3 processes x 8 threads, all on the test database
    connection, before = bot_connection, shared_token(bot_connection)
    # (a held refresh must not run into the callers' deadlines: those are what a hang would run into)
    stack = make_stack(BEAT_INTERVAL=1, OUTBOUND_TIMEOUT=60, REFRESH_WAIT_SECONDS=60)
    port = stack.web(workers=3, threads=8)
    stack.worker("worker-1")
    stack.worker("worker-2")
    stack.beat()
    url = f"http://127.0.0.1:{port}/api/v1/connections/{connection.slug}/token"
    # Warm every web process up (imports, database connection) with answers that cost the provider nothing
    # (refusals: past 20 from one address in a minute they are 429s).
    warm = in_threads([lambda: requests.get(url, timeout=30) for _ in range(24)], workers=24)
    assert {answer.status_code for answer in warm} <= {401, 429}, stack.logs()

    # when the token is expired and due, the provider holds every refresh until the test lets it go, and everyone
    # asks at the same moment
    authserver.hold(["refresh_token"])
    past = timezone.now() - timedelta(minutes=5)
    OAuthToken.objects.filter(pk=before.pk).update(expires_at=past, next_refresh_at=past)
    start = threading.Barrier(CALLERS + 1)

    def ask() -> requests.Response:
        start.wait(timeout=30)
        return requests.get(url, headers={"Authorization": f"Bearer {bot.raw_key}"}, timeout=60)

    with ThreadPoolExecutor(CALLERS) as pool:
        futures = [pool.submit(ask) for _ in range(CALLERS)]
        # Both workers get a task for the token (and beat queues its own within a second).
        stack.send_task("connections.tasks.refresh_token", before.pk, before.generation)
        stack.send_task("connections.tasks.refresh_token", before.pk, before.generation)
        start.wait(timeout=30)
        # then one refresh reaches the provider, and while it is held, a worker's task for the token ends: it found
        # the token leased by that refresh and left it to it (a worker does not wait for another's refresh)
        authserver.wait_held(1)
        stack.wait_until(lambda: stack.tasks("refresh_token") >= 1, 30, "a worker to leave the token to the refresh")
        assert authserver.held() == {"held_now": 1, "held_since_armed": 1}
        authserver.release()
        answers = [future.result(timeout=60) for future in futures]
    # Let the queued refresh tasks (the two sent, and any a sweep queued) end, and two more sweeps run: none of
    # them may refresh again.
    stack.wait_until(
        lambda: stack.tasks("refresh_token", "received") == stack.tasks("refresh_token") >= 2,
        30,
        "every refresh task the workers took to end",
    )
    stack.wait_for_sweeps(2)

    # then the provider saw one refresh request, and every caller got the token it returned
    logs = stack.logs()
    bad = [(answer.status_code, answer.text[:300]) for answer in answers if answer.status_code != 200]
    assert not bad, f"{len(bad)} of {CALLERS} callers failed: {bad[:5]}\n{logs}"
    tokens = {answer.json()["access_token"] for answer in answers}
    assert len(tokens) == 1, f"{len(tokens)} different access tokens were handed out\n{logs}"
    assert refresh_requests(authserver) == 1, f"{authserver.stats()}\n{logs}"
    after = shared_token(connection)
    assert after.access_token in tokens and after.access_token != before.access_token
    assert after.generation == before.generation + 1
    assert after.refresh_token != before.refresh_token  # rotated once, stored with the access token
    assert (after.state, after.consecutive_failures, after.lease_owner) == ("active", 0, "")
    assert all(answer.json()["expires_in"] > 3000 for answer in answers)
    assert authserver.whoami(after.access_token).json()["username"] == "alice"
