"""The token endpoint's answers from memory (connections.cache.token_cache): the same answers as the full path, no
SQL, and every change that matters seen by the very next request."""

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import OperationalError, transaction
from django.db.models import Sum
from django.test import Client
from django.utils import timezone

from connections import services
from connections.cache import token_cache
from connections.endpoint.bot_keys import bot_key_create, bot_key_revoke
from connections.engine.refresh import token_refresh
from connections.errors import ProviderError
from connections.models import AnswerVersion, AuditEvent, OAuthToken, Role
from tests.conftest import get_token, shared_token

pytestmark = pytest.mark.django_db


def warm(bot, connection) -> dict:
    """Two answers: the first through the database, the second from memory; returns the second's body."""
    first = get_token(bot.raw_key, connection.slug)
    assert first.status_code == 200, first.content
    second = get_token(bot.raw_key, connection.slug)
    assert second.status_code == 200
    assert (bot.key.key_id, connection.slug) in token_cache._process().answers
    return second.json()


def test_a_repeated_request_is_answered_from_memory_with_the_same_answer(
    bot_connection, bot, django_assert_num_queries
):
    first = get_token(bot.raw_key, bot_connection.slug)
    with django_assert_num_queries(0):
        second = get_token(bot.raw_key, bot_connection.slug)
    assert second.status_code == 200 and second["Cache-Control"] == "no-store"
    assert {**second.json(), "expires_in": 0} == {**first.json(), "expires_in": 0}
    assert second.json()["access_token"] == shared_token(bot_connection).access_token


def test_answers_from_memory_are_audited_like_the_others(bot_connection, bot):
    # given: one answer through the database and three from memory, their events kept for the next report
    for _ in range(4):
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    assert AuditEvent.objects.filter(action="token_request").count() == 0
    # when
    assert token_cache.report()
    # then: two rows alike but for their kind, the full path's answer and the three from memory rolled up
    events = list(AuditEvent.objects.filter(action="token_request").order_by("created_at", "id"))
    fields = ("actor_id", "actor_label", "connection_id", "connection_label", "outcome", "remote_addr", "detail")
    assert len({tuple(getattr(event, name) for name in fields) for event in events}) == 1
    assert [(event.kind, event.count) for event in events] == [("full", 1), ("memory", 3)]
    assert (
        events[0].actor == bot.user and events[0].connection == bot_connection and events[0].remote_addr == "127.0.0.1"
    )
    assert events[0].created_at == events[0].last_at <= events[1].created_at < events[1].last_at
    assert token_cache.report()  # written once
    assert answers_audited() == 4


def test_answers_of_the_same_minute_are_added_to_their_row(bot_connection, bot, one_rate_window):
    # given one report's answers written
    warm(bot, bot_connection)
    assert token_cache.report()
    first = AuditEvent.objects.get(action="token_request", kind="memory")
    # when more answers from memory are reported within the same minute
    for _ in range(5):
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    assert token_cache.report()
    # then they are added to the same row: its count, its last time moved on
    again = AuditEvent.objects.get(action="token_request", kind="memory")
    assert (again.pk, again.count, again.created_at) == (first.pk, 6, first.created_at)
    assert again.last_at > first.last_at
    assert answers_audited() == 7


def answers_audited(**lookups: object) -> int:
    """How many token answers the audit log accounts for: its rows' counts."""
    events = AuditEvent.objects.filter(action="token_request", outcome="success", **lookups)
    return events.aggregate(answers=Sum("count"))["answers"] or 0


def test_unreported_events_outlive_a_deleted_user_and_connection(bot_connection, bot):
    warm(bot, bot_connection)
    label = f"finance-bot (key {bot.key.key_id})"
    slug = bot_connection.slug
    bot.user.delete()
    bot_connection.delete()
    assert token_cache.report()
    event = AuditEvent.objects.filter(action="token_request").latest("id")
    assert (event.actor, event.connection, event.actor_label, event.connection_label) == (None, None, label, slug)


def _revoke(bot, connection, clock):
    bot_key_revoke(key=bot.key)


def _delete_key(bot, connection, clock):
    bot.key.delete()


def _deactivate_user(bot, connection, clock):
    bot.user.is_active = False
    bot.user.save()


def _leave_role(bot, connection, clock):
    bot.user.groups.remove(bot.role)


def _uninvite_role(bot, connection, clock):
    connection.roles.remove(bot.role)


def _uninvite_from_the_role_side(bot, connection, clock):
    bot.role.connections.clear()


def _delete_role(bot, connection, clock):
    Group.objects.get(pk=bot.role.pk).delete()


def _delete_role_in_the_admin(bot, connection, clock):
    Role.objects.get(pk=bot.role.pk).delete()  # the admin deletes the proxy, whose signals name Role, not Group


def _disable_connection(bot, connection, clock):
    connection.is_enabled = False
    connection.save()


def _disconnect(bot, connection, clock):
    services.connection_disconnect(connection=connection, actor=None)


def _key_expires(bot, connection, clock):
    # Nothing is written: only the wall clock passes the key's expiry (the monotonic clock, which ages cached
    # answers, does not move), so the answer from memory must check the expiry itself.
    clock.move_to(bot.key.expires_at + timedelta(seconds=1), tick=True)


@dataclasses.dataclass(frozen=True)
class Change:
    make: Callable[..., None]  # (bot, connection, clock): the change, made after an answer was cached
    status: int  # what the next request gets
    error: str


CHANGES = {
    "key revoked": Change(_revoke, 401, "invalid_key"),
    "key deleted": Change(_delete_key, 401, "invalid_key"),
    "key expired": Change(_key_expires, 401, "invalid_key"),
    "user deactivated": Change(_deactivate_user, 401, "invalid_key"),
    "user left the role": Change(_leave_role, 403, "forbidden"),
    "role uninvited": Change(_uninvite_role, 403, "forbidden"),
    "role's invitations cleared": Change(_uninvite_from_the_role_side, 403, "forbidden"),
    "role deleted": Change(_delete_role, 403, "forbidden"),
    "role deleted in the admin": Change(_delete_role_in_the_admin, 403, "forbidden"),
    "connection disabled": Change(_disable_connection, 403, "forbidden"),
    "connection disconnected": Change(_disconnect, 409, "not_connected"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_the_next_request_after_a_change_sees_it(bot_connection, bot, change, time_machine):
    # given a key that expires in ten minutes (its token in an hour), and an answer cached for it
    bot.key.expires_at = timezone.now() + timedelta(minutes=10)
    bot.key.save()
    warm(bot, bot_connection)
    # when the change is made in this process (tests/connections/cache/test_across_web_processes.py: in another)
    CHANGES[change].make(bot, bot_connection, time_machine)
    # then the very next request sees it
    response = get_token(bot.raw_key, bot_connection.slug)
    assert (response.status_code, response.json().get("error")) == (CHANGES[change].status, CHANGES[change].error)


# The two below run in one process, where the refresh evicts this process's cached answer itself; across
# processes the token row's generation and state carry it (tests/connections/cache/test_across_web_processes.py).
def test_a_token_refreshed_by_this_process_is_served_at_once(bot_connection, bot, authserver):
    before = warm(bot, bot_connection)["access_token"]
    token_refresh(token=shared_token(bot_connection), actor_label="another process")
    after = get_token(bot.raw_key, bot_connection.slug).json()["access_token"]
    assert after != before and after == shared_token(bot_connection).access_token
    assert authserver.whoami(after).status_code == 200


def test_a_refresh_rejected_in_this_process_is_seen_at_once(bot_connection, bot, authserver):
    warm(bot, bot_connection)
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    with pytest.raises(ProviderError):
        token_refresh(token=shared_token(bot_connection), actor_label="beat")
    response = get_token(bot.raw_key, bot_connection.slug)
    assert (response.status_code, response.json()["error"]) == (409, "reauthorization_required")


@pytest.mark.parametrize("params", [{"min_validity": "3600"}, {"force_refresh": "true"}])
def test_refreshes_asked_for_take_the_full_path(bot_connection, bot, authserver, params):
    before = warm(bot, bot_connection)["access_token"]
    response = get_token(bot.raw_key, bot_connection.slug, **params)
    assert response.status_code == 200 and response.json()["access_token"] != before
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


def test_a_wrong_secret_with_a_known_key_id_is_refused(bot_connection, bot):
    warm(bot, bot_connection)
    key_id = bot.key.key_id
    response = get_token(f"crk_{key_id}_{'x' * 43}", bot_connection.slug)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_key")


def test_the_rate_limit_counts_answers_from_memory(bot_connection, bot, settings, one_rate_window):
    settings.TOKEN_RATE_LIMIT_PER_MINUTE = 3
    assert [get_token(bot.raw_key, bot_connection.slug).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_last_used_is_still_written_once_a_minute(bot_connection, bot):
    warm(bot, bot_connection)
    stale = timezone.now() - timedelta(minutes=5)
    type(bot.key).objects.filter(pk=bot.key.pk).update(last_used_at=stale)
    grant = token_cache._process().answers[(bot.key.key_id, bot_connection.slug)]
    token_cache._process().answers[(bot.key.key_id, bot_connection.slug)] = type(grant)(
        **{**vars(grant), "last_used_at": stale}
    )
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    bot.key.refresh_from_db()
    assert bot.key.last_used_at > stale


def test_user_specific_grants_are_each_users_own(make_connection, make_user, authserver):
    role = Group.objects.create(name="Agents")
    connection = make_connection(token_type="user_specific")
    connection.roles.add(role)
    tokens = {}
    for name in ("agent-a", "agent-b"):
        user = make_user(name, roles=(role,))
        OAuthToken.objects.create(
            connection=connection,
            user=user,
            access_token=f"token-of-{name}",
            expires_at=timezone.now() + timedelta(hours=1),
        )
        tokens[name] = bot_key_create(user=user, name=name)[1]
    for _ in range(3):
        for name, raw in tokens.items():
            assert get_token(raw, connection.slug).json()["access_token"] == f"token-of-{name}"


def test_when_reports_fail_an_answer_is_not_given_from_memory_once_it_is_ten_intervals_old(
    bot_connection, bot, monkeypatch, caplog
):
    warm(bot, bot_connection)
    # the database stops answering the reports (not the requests), and each request comes a second after the last
    monkeypatch.setattr(token_cache, "_versions_read", refused_by_the_database)
    now = [time.monotonic()]
    monkeypatch.setattr(token_cache, "clock", lambda: now[0])
    for _ in range(3):
        now[0] += 1
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    # then the full path answered each, their audit events are kept for when a report succeeds, and the failure
    # was logged once
    assert answered_by() == ["full path", "memory", "full path", "full path", "full path"]
    assert [record.getMessage() for record in caplog.records if record.name == "connections.cache.token_cache"] == [
        "The database does not answer the token cache's reports; the full path answers."
    ]
    # but an answer the full path has just read is as fresh as a report: given from memory until it is as old
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    assert answered_by()[-1] == "memory"
    # and once the database answers the reports again, every event is written
    monkeypatch.undo()
    assert token_cache.report()
    assert answers_audited() == 6


def test_while_reports_fail_a_process_holds_a_bounded_number_of_unwritten_events(bot_connection, bot, monkeypatch):
    # given a process holding at most 3 unwritten audit events, whose reports the database refuses
    monkeypatch.setattr(token_cache, "MAX_UNWRITTEN_EVENTS", 3)
    warm(bot, bot_connection)  # two answers, two events held
    monkeypatch.setattr(token_cache, "_versions_read", refused_by_the_database)
    # when bots go on asking
    for _ in range(6):
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
        # then the process never holds more than the bound
        assert len(token_cache._process().events) <= 3
    # and what it could not hold was written before its answer: every answer is accounted for
    written = answers_audited()
    assert written + len(token_cache._process().events) == 8
    assert written >= 5


def refused_by_the_database(*read):
    raise OperationalError("connection refused")


# --- what a review found (the trust issue) ------------------------------------------------------------------------


def test_a_key_without_its_prefix_is_refused_from_memory_as_by_the_database(bot_connection, bot):
    warm(bot, bot_connection)
    response = get_token(bot.raw_key.removeprefix("crk_"), bot_connection.slug)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_key")


def test_invalidating_while_other_threads_cache_answers_never_fails(bot_connection, bot):
    # given thousands of answers, and four threads caching more, as a web process with --threads 4 does;
    # the interpreter switches threads as often as it can, so a race shows up at once rather than once a day
    template = _cached(bot, bot_connection)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stop, failures = threading.Event(), []

    def churn(number: int) -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                token_cache.remember(dataclasses.replace(template, key_id=f"{number}-{n % 5000}"))
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            failures.append(exc)

    threads = [threading.Thread(target=churn, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    # when other writes invalidate them, over and over
    try:
        for _ in range(200):
            token_cache.token_changed(bot_connection.slug)
            token_cache.identity_changed()
    except Exception as exc:  # noqa: BLE001 - a failure here rolls back the write that invalidated
        failures.append(exc)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(switch_interval)
    # then nothing ever failed
    assert failures == []


def test_a_cached_answer_is_read_again_after_a_minute_by_the_monotonic_clock(
    bot_connection, bot, monkeypatch, django_assert_max_num_queries
):
    warm(bot, bot_connection)
    # a minute passes, while the wall clock is set back by as much (NTP, a VM resumed): only the monotonic
    # clock says how old the answer is
    moved = time.monotonic() + 61
    monkeypatch.setattr(token_cache, "clock", lambda: moved)
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 200
    assert answered_by() == ["full path", "memory", "full path"]


def test_the_identity_version_moves_with_the_change_or_not_at_all(bot_connection, bot):
    before = identity_version()
    # a revocation rolled back leaves it: answers kept elsewhere stay good
    with pytest.raises(RuntimeError), transaction.atomic():
        bot_key_revoke(key=bot.key)
        raise RuntimeError
    assert identity_version() == before
    # one committed moves it
    bot_key_revoke(key=bot.key)
    assert identity_version() > before


def answered_by() -> list[str]:
    """How each answer this process has not reported yet was given, in order (from its audit event)."""
    kinds = [event["kind"] for event, _, _ in token_cache._process().events]
    return ["memory" if kind == AuditEvent.Kind.MEMORY else "full path" for kind in kinds]


def identity_version() -> int:
    return AnswerVersion.objects.filter(name=AnswerVersion.IDENTITY).values_list("value", flat=True).first() or 0


def _cached(bot, bot_connection) -> token_cache.CachedAnswer:
    warm(bot, bot_connection)
    return token_cache._process().answers[(bot.key.key_id, bot_connection.slug)]


def test_an_answer_from_memory_is_the_full_paths_answer_with_the_same_headers(bot_connection, bot, settings):
    settings.SECURE_HSTS_SECONDS = 3600  # the headers SecurityMiddleware adds apply to both (with https)
    full, memory = (Client().get(f"/api/v1/connections/{bot_connection.slug}/token", secure=True,
                                 HTTP_AUTHORIZATION=f"Bearer {bot.raw_key}") for _ in range(2))  # fmt: skip
    assert answered_by() == ["full path", "memory"]
    assert {**memory.json(), "expires_in": 0} == {**full.json(), "expires_in": 0}
    # All but X-Frame-Options, which only a page shown in a browser needs (the middleware skipped adds it).
    assert memory["X-Request-ID"] != full["X-Request-ID"]  # each request has its own id, whoever answers it
    same = {name: value for name, value in full.headers.items() if name not in ("X-Frame-Options", "X-Request-ID")}
    assert {name: value for name, value in memory.headers.items() if name != "X-Request-ID"} == same
    assert memory["Strict-Transport-Security"] == "max-age=3600" and memory["Content-Length"] == full["Content-Length"]


@pytest.mark.parametrize(
    ("path", "is_the_token_endpoint"),
    [
        ("/api/v1/connections/salesforce-prod/token", True),
        ("/api/v1/connections/with%20space/token", True),
        ("/api/v1/connections/a/b/token", False),
        ("/api/v1/connections//token", False),
        ("/api/v1/connections/salesforce-prod/token/", False),
        ("/api/v1/connections/salesforce-prod/tokens", False),
    ],
)
def test_the_middleware_answers_exactly_the_token_endpoints_paths(path, is_the_token_endpoint):
    from urllib.parse import unquote

    from django.urls import Resolver404, resolve

    from connections.endpoint.middleware import TOKEN_PATH

    try:
        resolved = resolve(unquote(path)).url_name == "connection_token"
    except Resolver404:
        resolved = False
    assert resolved is is_the_token_endpoint
    assert (TOKEN_PATH.fullmatch(unquote(path)) is not None) is is_the_token_endpoint


def test_with_the_memory_off_every_request_takes_the_full_path(bot_connection, bot, settings):
    settings.TOKEN_CACHE_ENABLED = False
    for _ in range(3):
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    assert answered_by() == ["full path"] * 3
