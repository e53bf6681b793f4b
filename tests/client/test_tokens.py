"""ControlRoom.token() against the live server: one request per token while it stays valid, a new one when it
comes within min_validity of expiry, and one request for threads asking at once."""

import threading
from datetime import timedelta

import pytest
from controlroom_client import ConfigurationError, ControlRoom, Token
from django.utils import timezone

from connections.models import OAuthToken
from tests.conftest import authorize_and_store_token, shared_token
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_token_is_asked_once_while_it_stays_valid(control_room, recorder, bot_connection, authserver):
    # when the bot asks three times for the same connection
    first = control_room.token(bot_connection.slug)
    second = control_room.token(bot_connection.slug)
    third = control_room.token(bot_connection.slug, min_validity=600)

    # then Control Room was asked once, and the token is the one the provider accepts
    assert len(recorder.token_requests()) == 1
    assert first == second == third == shared_token(bot_connection).access_token
    assert authserver.whoami(first).json()["username"] == "alice"


def test_the_whole_answer_follows_the_endpoint(control_room, recorder, bot_connection):
    # when the bot asks for the whole answer
    token = control_room.get_token(bot_connection.slug)

    # then every field of the endpoint's JSON is there, read as what it means
    stored = shared_token(bot_connection)
    assert isinstance(token, Token)
    assert token.connection == bot_connection.slug
    assert token.access_token == stored.access_token
    assert token.token_type == "Bearer"
    assert token.expires_at == stored.expires_at.replace(microsecond=0)
    assert 3500 < token.expires_in <= 3600
    assert token.scope == "read write"
    assert token.extra == {"instance_url": "https://acme.my.example"}
    assert stored.access_token not in repr(token)  # a log line of the token object leaks nothing
    assert recorder.token_requests() == [{"min_validity": ["60"]}]
    assert token.as_dict()["access_token"] == stored.access_token
    assert token.as_dict()["expires_at"] == stored.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_token_within_min_validity_of_expiry_is_asked_again(control_room, recorder, bot_connection, authserver):
    # given a stored token that expires in 90 seconds
    OAuthToken.objects.filter(connection=bot_connection).update(expires_at=timezone.now() + timedelta(seconds=90))
    old = control_room.get_token(bot_connection.slug)
    assert 80 < old.expires_in <= 90

    # when the bot needs it for 60 seconds, then for 120
    kept = control_room.token(bot_connection.slug, min_validity=60)
    renewed = control_room.get_token(bot_connection.slug, min_validity=120)

    # then the first is answered from memory; the second asks Control Room with min_validity=120, which
    # refreshed at the provider first: a new token, good for an hour, that the provider accepts
    assert kept == old.access_token
    assert [query["min_validity"] for query in recorder.token_requests()] == [["60"], ["120"]]
    assert renewed.access_token != old.access_token
    assert renewed.expires_in > 3500
    assert authserver.whoami(renewed.access_token).status_code == 200
    # and the new one is kept in its turn
    assert control_room.token(bot_connection.slug, min_validity=120) == renewed.access_token
    assert len(recorder.token_requests()) == 2


def test_force_refresh_asks_even_while_the_token_is_valid(control_room, recorder, bot_connection, authserver):
    # given a token kept in memory
    old = control_room.token(bot_connection.slug)

    # when the bot forces a refresh
    new = control_room.token(bot_connection.slug, force_refresh=True)

    # then Control Room was asked with force_refresh=true and refreshed at the provider
    assert recorder.token_requests()[1] == {"min_validity": ["60"], "force_refresh": ["true"]}
    assert new != old
    assert authserver.whoami(new).status_code == 200
    assert control_room.token(bot_connection.slug) == new
    assert len(recorder.token_requests()) == 2


def test_forget_drops_the_kept_token(control_room, recorder, bot_connection):
    control_room.token(bot_connection.slug)
    control_room.forget(bot_connection.slug)
    control_room.token(bot_connection.slug)
    assert len(recorder.token_requests()) == 2


class WatchedLock:
    """The client's lock of one slug, counting the threads that found it taken and waited for it."""

    def __init__(self) -> None:
        self.lock, self.guard, self.waited = threading.Lock(), threading.Lock(), 0

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            with self.guard:
                self.waited += 1
            self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_threads_asking_for_the_same_slug_make_one_request(control_room, recorder, bot_connection, monkeypatch):
    # given eight threads about to ask at once; the first request is held until the seven others wait for it
    threads_count = 8
    slug_lock = WatchedLock()
    monkeypatch.setattr(control_room, "_lock_for", lambda slug: slug_lock)
    others_waiting = threading.Event()

    def hold_until_the_others_wait(request) -> None:
        wait_for(lambda: slug_lock.waited == threads_count - 1, 30, "the seven others to wait for the request")
        others_waiting.set()

    recorder.before_send = hold_until_the_others_wait
    tokens: list[str] = []

    # when they ask
    threads = [
        threading.Thread(target=lambda: tokens.append(control_room.token(bot_connection.slug)))
        for _ in range(threads_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then the seven others waited while the first request was out, and all got the same token from it
    assert others_waiting.is_set(), f"{slug_lock.waited} threads waited for the first request"
    assert len(tokens) == threads_count
    assert set(tokens) == {shared_token(bot_connection).access_token}
    assert len(recorder.token_requests()) == 1


def test_threads_asking_for_different_slugs_do_not_wait_for_each_other(
    control_room, recorder, bot_connection, make_connection, manager_client, authserver, bot
):
    # given a second connection, and the first one's request held until the second one's has been sent
    other = make_connection()
    authorize_and_store_token(manager_client, other, authserver)
    bot.invite(other)
    other_sent = threading.Event()

    def hold_the_first(request) -> None:
        if f"/{bot_connection.slug}/" in request.url:
            assert other_sent.wait(timeout=10), "the second slug waited for the first one's request"
        else:
            other_sent.set()

    recorder.before_send = hold_the_first
    results: dict[str, str] = {}
    first = threading.Thread(target=lambda: results.update(a=control_room.token(bot_connection.slug)))

    # when both are asked for at once
    first.start()
    wait_for(lambda: recorder.sent, 10, "the first request")
    results["b"] = control_room.token(other.slug)
    first.join(timeout=30)

    # then each got its own token
    assert results == {"a": shared_token(bot_connection).access_token, "b": shared_token(other).access_token}


def test_settings_come_from_the_environment(monkeypatch, live_server, bot, bot_connection):
    # given only the environment, as a bot runner sets it
    monkeypatch.setenv("CONTROLROOM_URL", live_server.url + "/")
    monkeypatch.setenv("CONTROLROOM_KEY", bot.raw_key)

    # when / then
    with ControlRoom() as client:
        assert client.token(bot_connection.slug) == shared_token(bot_connection).access_token
        assert bot.raw_key not in repr(client)


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        (None, "crk_x", "No Control Room URL: pass url=... or set CONTROLROOM_URL"),
        ("http://127.0.0.1:1", None, "No bot key: pass key=... or set CONTROLROOM_KEY"),
        ("controlroom.example", "crk_x", "must start with http:// or https://"),
        ("http://127.0.0.1:1", "   ", "No bot key"),
    ],
)
def test_missing_settings_are_a_clear_error(monkeypatch, url, key, message):
    monkeypatch.delenv("CONTROLROOM_URL", raising=False)
    monkeypatch.delenv("CONTROLROOM_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=message) as raised:
        ControlRoom(url, key)
    assert raised.value.code == "configuration"
    assert raised.value.status is None


@pytest.mark.parametrize(
    ("slug", "min_validity", "error"), [("", 60, ValueError), ("x", "60", TypeError), ("x", -1, ValueError)]
)
def test_arguments_of_the_wrong_kind_are_refused_before_any_request(control_room, recorder, slug, min_validity, error):
    with pytest.raises(error):
        control_room.token(slug, min_validity=min_validity)
    assert recorder.sent == []
