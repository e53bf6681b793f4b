"""The token endpoint's answers from memory (connections.token_cache) across real gunicorn processes: a change
made elsewhere reaches every one of them within a report interval, and every answer gets its audit event, also
those a process still held when it was stopped."""

import pytest
import redis
import requests

from connections.bot_keys import bot_key_revoke
from connections.models import AuditEvent, BotKey
from tests.refresh.stack import in_threads

pytestmark = pytest.mark.django_db(transaction=True)

WEB_PROCESSES = 3


def audited(outcome: str) -> int:
    return AuditEvent.objects.filter(action="token_request", outcome=outcome).count()


def ask(url: str, raw_key: str, times: int) -> list[int]:
    headers = {"Authorization": f"Bearer {raw_key}"}
    answers = in_threads([lambda: requests.get(url, headers=headers, timeout=30) for _ in range(times)], workers=6)
    return [answer.status_code for answer in answers]


def test_a_revoked_key_is_refused_by_every_web_process_and_every_answer_is_audited(make_stack, connected, bot):
    # given three web processes that have each answered the bot, most answers from memory
    # (the revoked key is refused every time here: no per-address limit, every refusal audited one by one)
    stack = make_stack(redis_db=12, TOKEN_AUTH_FAILURES_PER_MINUTE=0, AUTH_FAILURES_AUDITED_ONE_BY_ONE=1000)
    port = stack.web(workers=WEB_PROCESSES, threads=1)
    stack.worker()
    url = f"http://127.0.0.1:{port}/api/v1/connections/{connected.slug}/token"
    assert set(ask(url, bot.raw_key, 300)) == {200}, stack.logs()
    # when the key is revoked here, in another process
    bot_key_revoke(key=BotKey.objects.get(user=bot.user))
    stack.sleep(0.5, "the web processes heard of it")  # ten report intervals
    # then every web process refuses it
    assert set(ask(url, bot.raw_key, 60)) == {401}, stack.logs()
    # and every answer has its audit event, whether it was answered from memory or not
    stack.wait_until(lambda: audited("success") >= 300, 30, "the audit events of the 300 answers")
    assert (audited("success"), audited("failure")) == (300, 60)


def test_a_stopped_web_process_reports_what_it_answered_before_it_exits(make_stack, connected, bot):
    # given web processes reporting every 30 s only, which have answered 100 requests just now
    stack = make_stack(redis_db=13, TOKEN_CACHE_SYNC_SECONDS=30)
    port = stack.web(workers=WEB_PROCESSES, threads=1)
    stack.worker()
    url = f"http://127.0.0.1:{port}/api/v1/connections/{connected.slug}/token"
    assert set(ask(url, bot.raw_key, 100)) == {200}, stack.logs()
    stack.sleep(3, "a drain of whatever was reported")
    held = 100 - audited("success")
    assert held > 50  # most answers were from memory, their events not reported yet
    # when the web processes are stopped as a deployment stops them
    stack.stop("web")
    # then they reported every answer on their way out
    stack.wait_until(lambda: audited("success") == 100, 30, f"the {held} events the web processes held")


def test_a_redis_restart_does_not_bring_back_an_answer_a_revocation_ended(make_stack, connected, bot):
    # given one web process that reports every second, and a Redis that has just restarted without
    # persistence (as the compose file runs it): no counter holds a value yet
    stack = make_stack(redis_db=14, TOKEN_CACHE_SYNC_SECONDS=1)
    port = stack.web(workers=1, threads=1)
    url = f"http://127.0.0.1:{port}/api/v1/connections/{connected.slug}/token"
    redis_server = redis.Redis.from_url(stack.broker_url)
    redis_server.flushdb()
    # and an answer that process keeps in memory
    assert set(ask(url, bot.raw_key, 3)) == {200}, stack.logs()
    # when the key is revoked, and Redis restarts again before the web process has heard of it
    bot_key_revoke(key=BotKey.objects.get(user=bot.user))
    redis_server.flushdb()
    stack.sleep(2.5, "the web process reported to the restarted Redis")
    # then the revoked key is refused: the old answer is not good again because the counters were reset
    assert set(ask(url, bot.raw_key, 3)) == {401}, stack.logs()
