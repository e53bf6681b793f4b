"""The token endpoint's answers from memory (connections.cache.token_cache) across real gunicorn processes.

A change an administrator makes (a key revoked, the bot taken out of its role, the connection disabled or
disconnected) reaches every web process with its first report after the change (every TOKEN_CACHE_SYNC_SECONDS,
as the README says): far sooner than the ten intervals after which a process checks on the request itself. The
tests wait for that report (the audit event of an answer given after the change, which the report writes) rather
than for a number of seconds. Every answer gets its audit event, also those a process still held when it was
stopped; and a Redis restart brings no answer back that a change ended.
"""

from collections.abc import Callable

import pytest
import redis
import requests
from django.contrib.auth.models import User
from django.db.models import F, Sum

from connections.endpoint.bot_keys import bot_key_revoke
from connections.models import AuditEvent, Connection, OAuthToken, Role
from connections.services import connection_disconnect, connection_save_audit, role_update
from tests.conftest import shared_token
from tests.support.bots import Bot
from tests.support.stack import Stack, in_threads

pytestmark = pytest.mark.django_db(transaction=True)

WEB_PROCESSES = ("web-1", "web-2", "web-3")
SYNC = 0.05  # TOKEN_CACHE_SYNC_SECONDS: the setting's default, the README's figure
EVENT_WAIT = 60  # seconds: only a hang comes near it (a report comes every SYNC)


def audited(outcome: str, **lookups: object) -> int:
    """How many token answers the audit log accounts for (its rows roll answers up: their counts)."""
    events = AuditEvent.objects.filter(action="token_request", outcome=outcome, **lookups)
    return events.aggregate(answers=Sum("count"))["answers"] or 0


def audited_from_memory() -> int:
    return audited("success", kind=AuditEvent.Kind.MEMORY)


def token_url(port: int, connection: Connection) -> str:
    return f"http://127.0.0.1:{port}/api/v1/connections/{connection.slug}/token"


def ask_once(url: str, raw_key: str) -> requests.Response:
    return requests.get(url, headers={"Authorization": f"Bearer {raw_key}"}, timeout=30)


def ask(url: str, raw_key: str, times: int) -> list[int]:
    answers = in_threads([lambda: ask_once(url, raw_key) for _ in range(times)], workers=6)
    return [answer.status_code for answer in answers]


def answering_from_memory(stack: Stack, urls: dict[str, str], raw_key: str) -> None:
    """Each web process answers the bot twice: the full path first (the answer kept), then from memory (its
    audit event written by the process's next report, which says so)."""
    for answered, (name, url) in enumerate(urls.items(), start=1):
        assert [ask_once(url, raw_key).status_code for _ in range(2)] == [200, 200], stack.logs()
        stack.wait_until(lambda n=answered: audited_from_memory() == n, EVENT_WAIT, f"{name} to answer from memory")


def refusals(stack: Stack, urls: dict[str, str], raw_key: str) -> dict[str, tuple[int, str, int]]:
    """Ask each web process, after a change, until it refuses the key: {name: (status, error, answers from memory
    it gave first)}. Before each new question the process's report of the previous answer is awaited (its audit
    event written): that report read the versions after the change, so the process knows of it. A process may
    still answer once more from memory in the moment between that report's write and its taking the versions in;
    more than that, and the report did not carry the change."""
    refused: dict[str, tuple[int, str, int]] = {}
    for name, url in urls.items():
        from_memory = 0
        while (answer := ask_once(url, raw_key)).status_code == 200:
            from_memory += 1
            assert from_memory <= 2, f"{name} still answers from memory after its report\n{stack.logs()}"
            seen = audited_from_memory()
            stack.wait_until(lambda seen=seen: audited_from_memory() > seen, EVENT_WAIT, f"{name}'s next report")
        refused[name] = (answer.status_code, answer.json()["error"], from_memory)
    return refused


# The administrator's actions, through the services the admin calls.


def revoke_the_key(connection: Connection, bot: Bot, manager: User) -> None:
    bot_key_revoke(key=bot.key, actor=manager)


def remove_the_bot_from_its_role(connection: Connection, bot: Bot, manager: User) -> None:
    role = Role.objects.get(pk=bot.role.pk)
    role_update(
        role=role,
        feature_permissions=list(role.permissions.values_list("codename", flat=True)),
        members=list(role.user_set.exclude(pk=bot.user.pk)),
        connections=list(role.connections.all()),
        actor=manager,
    )


def disable_the_connection(connection: Connection, bot: Bot, manager: User) -> None:
    connection.is_enabled = False
    connection.save()
    connection_save_audit(connection=connection, actor=manager, created=False, changed=["is_enabled"])


def disconnect_the_connection(connection: Connection, bot: Bot, manager: User) -> None:
    connection_disconnect(connection=connection, actor=manager)


CHANGES = [  # and what the bot is told afterwards
    (revoke_the_key, (401, "invalid_key")),
    (remove_the_bot_from_its_role, (403, "forbidden")),
    (disable_the_connection, (403, "forbidden")),
    (disconnect_the_connection, (409, "not_connected")),
]


@pytest.mark.parametrize(("change", "refusal"), CHANGES, ids=[change.__name__ for change, _ in CHANGES])
def test_a_change_reaches_every_web_process_with_its_next_report(
    change: Callable[[Connection, Bot, User], None], refusal: tuple[int, str], make_stack, bot_connection, bot, manager
):
    # given three single-worker web processes, each on its own port, each answering the bot from memory, and
    # checking on a request itself only after ten report intervals without a report (a minute here: never)
    stack = make_stack(TOKEN_CACHE_SYNC_SECONDS=SYNC)
    urls = {name: token_url(port, bot_connection) for name, port in stack.webs(WEB_PROCESSES).items()}
    answering_from_memory(stack, urls, bot.raw_key)

    # when an administrator makes the change, here in another process
    change(bot_connection, bot, manager)

    # then every web process refuses the bot once its next report has been made
    refused = refusals(stack, urls, bot.raw_key)
    assert {name: (status, error) for name, (status, error, _) in refused.items()} == dict.fromkeys(urls, refusal)


def new_token_served(stack: Stack, urls: dict[str, str], raw_key: str, new: str) -> dict[str, int]:
    """Ask each web process until it answers with the new token, awaiting its report before each new question as
    refusals() does: {name: answers with the old token it gave first}."""
    old_answers: dict[str, int] = {}
    for name, url in urls.items():
        old = 0
        while ask_once(url, raw_key).json()["access_token"] != new:
            old += 1
            assert old <= 2, f"{name} still answers with the old token after its report\n{stack.logs()}"
            seen = audited("success")
            stack.wait_until(lambda seen=seen: audited("success") > seen, EVENT_WAIT, f"{name}'s next report")
        old_answers[name] = old
    return old_answers


def test_a_token_row_written_without_a_signal_reaches_every_web_process_through_the_change_log(
    make_stack, bot_connection, bot
):
    # given three web processes answering the bot from memory, which have each reported since (so each has found
    # its position in the change log, which a refresh has written to)
    token = shared_token(bot_connection)
    OAuthToken.objects.filter(pk=token.pk).update(generation=F("generation") + 1)
    stack = make_stack(TOKEN_CACHE_SYNC_SECONDS=SYNC)
    urls = {name: token_url(port, bot_connection) for name, port in stack.webs(WEB_PROCESSES).items()}
    answering_from_memory(stack, urls, bot.raw_key)
    for name, url in urls.items():
        seen = audited("success")
        assert ask_once(url, bot.raw_key).status_code == 200
        stack.wait_until(lambda seen=seen: audited("success") > seen, EVENT_WAIT, f"{name}'s next report")
    # when another process writes the token row with QuerySet.update (no signal, no call to the cache), and even
    # leaves its generation as it was: only the database's trigger can tell the web processes
    new = "rotated-elsewhere-" + "x" * 40
    assert OAuthToken.objects.filter(pk=token.pk).update(access_token=new) == 1
    # then each web process answers with the new token once its next report has read the log
    assert set(new_token_served(stack, urls, bot.raw_key, new)) == set(urls)


def test_a_stopped_web_process_reports_what_it_answered_before_it_exits(make_stack, bot_connection, bot):
    # given web processes reporting every 30 s only, which have answered 100 requests just now
    stack = make_stack(TOKEN_CACHE_SYNC_SECONDS=30)
    port = stack.web(workers=3, threads=1)
    url = token_url(port, bot_connection)
    assert set(ask(url, bot.raw_key, 100)) == {200}, stack.logs()
    held = 100 - audited("success")
    assert held > 50  # most answers were from memory, their events not reported yet
    # when the web processes are stopped as a deployment stops them
    stack.stop("web")
    # then they reported every answer on their way out
    stack.wait_until(lambda: audited("success") == 100, 30, f"the {held} events the web processes held")


def test_every_answer_of_several_web_processes_is_counted_in_a_few_rows(make_stack, bot_connection, bot):
    # given three web processes reporting at the default interval (no rate limit), answering 600 requests at once
    stack = make_stack(TOKEN_RATE_LIMIT_PER_MINUTE=0)
    port = stack.web(workers=3, threads=2)
    url = token_url(port, bot_connection)
    assert set(ask(url, bot.raw_key, 600)) == {200}, stack.logs()
    # when they have reported (on their way out, for what they still held)
    stack.stop("web")
    # then the rows' counts add up to the answers given, exactly
    stack.wait_until(lambda: audited("success") == 600, 30, "the answers to be reported")
    assert audited("success") == 600
    # in at most one row per process, kind (full path, memory) and minute: the test may span two minutes
    rows = AuditEvent.objects.filter(action="token_request")
    assert rows.count() <= 3 * 2 * 2, list(rows.values("kind", "count", "created_at"))


def test_a_redis_restart_does_not_bring_back_an_answer_a_revocation_ended(make_stack, bot_connection, bot, manager):
    # given one web process, and a Redis that has just restarted without persistence (as the compose file runs
    # it): no counter holds a value yet
    stack = make_stack(TOKEN_CACHE_SYNC_SECONDS=SYNC)
    urls = {"web": token_url(stack.web(workers=1, threads=1), bot_connection)}
    redis_server = redis.Redis.from_url(stack.broker_url)
    redis_server.flushdb()
    # and an answer that process keeps in memory
    answering_from_memory(stack, urls, bot.raw_key)
    # when the key is revoked, and Redis restarts again before the web process has heard of it
    revoke_the_key(bot_connection, bot, manager)
    redis_server.flushdb()
    # then the revoked key is refused once the process has reported: the old answer is not good again because the
    # counters were reset
    refused = refusals(stack, urls, bot.raw_key)
    assert refused["web"][:2] == (401, "invalid_key"), refused
