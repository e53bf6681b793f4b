"""No secret in what the processes print: gunicorn as `make run` starts it (gunicorn.conf.py) and a Celery worker
as the Procfile starts it, driven through a whole connection's life over HTTP (an administrator signs in, connects,
a bot gets its token, forces a refresh, a worker refreshes it), their output then searched for every secret the
test used or saw."""

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.utils import timezone

from connections.models import OAuthToken
from tests.conftest import PROVIDER_USER, shared_token
from tests.support.stack import Stack

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "manager-pass-6c1f0e"  # the test's own administrator


def signed_in(base: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/admin/login/", timeout=30)
    form = {"username": "secrets-manager", "password": PASSWORD}
    answer = session.post(
        f"{base}/admin/login/?next=/admin/",
        data={**form, "csrfmiddlewaretoken": session.cookies["controlroom_csrftoken"]},
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 302, answer.text[:500]
    return session


def callback_through_the_web_process(session: requests.Session, base: str, slug: str, authserver) -> dict[str, str]:
    """Connect through the web process and the real server: the callback's query (code, state), once followed."""
    csrf = {"X-CSRFToken": session.cookies["controlroom_csrftoken"]}
    started = session.post(f"{base}/oauth/connect/{slug}/", headers=csrf, allow_redirects=False, timeout=30)
    assert started.status_code == 302, started.text[:500]
    callback = authserver.authorize_with_requests(started.headers["Location"], *PROVIDER_USER)
    parts = urlsplit(callback)
    finished = session.get(f"{base}{parts.path}?{parts.query}", allow_redirects=False, timeout=30)
    assert finished.status_code == 302, finished.text[:500]
    return {name: values[0] for name, values in parse_qs(parts.query).items()}


def test_no_secret_reaches_the_web_or_worker_output(make_stack, make_connection, authserver, bot, settings):
    # given the web server and a worker as make run starts them, and an administrator
    # (hashed as the web process hashes passwords: the test settings' fast hasher is not among its hashers)
    hashed = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt())
    User.objects.create(username="secrets-manager", password=hashed, is_staff=True, is_superuser=True)
    stack: Stack = make_stack(PUBLIC_URL=settings.PUBLIC_URL)
    base = f"http://127.0.0.1:{stack.web_as_make_run_starts_it()}"
    stack.worker(pool="threads", concurrency=2)
    connection = make_connection()
    bot.invite(connection)

    # when the administrator signs in and connects, the bot gets its token and forces a refresh, and a worker
    # refreshes it once more
    session = signed_in(base)
    callback = callback_through_the_web_process(session, base, connection.slug, authserver)
    first = shared_token(connection)
    assert first is not None, stack.logs()
    asked = f"{base}/api/v1/connections/{connection.slug}/token"
    bearer = {"Authorization": f"Bearer {bot.raw_key}"}
    given = requests.get(asked, headers=bearer, timeout=30).json()["access_token"]
    forced = requests.get(asked, headers=bearer, params={"force_refresh": "true"}, timeout=30).json()
    by_bot = shared_token(connection)
    OAuthToken.objects.filter(pk=by_bot.pk).update(next_refresh_at=timezone.now() - timedelta(seconds=1))
    stack.send_task("connections.tasks.refresh_token", by_bot.pk, by_bot.generation)
    by_worker = stack.wait_until(
        lambda: (token := shared_token(connection)).generation > by_bot.generation and token, 60, "the worker's refresh"
    )

    # then none of what the test used or saw is in their output
    secrets = {
        "the authorization code": callback["code"],
        "the state": callback["state"],
        "the client secret": connection.client_secret,
        "the bot key": bot.raw_key,
        "the administrator's password": PASSWORD,
        "the session cookie": session.cookies["controlroom_sessionid"],
        "the CSRF token": session.cookies["controlroom_csrftoken"],
        "the provider password": PROVIDER_USER[1],
    }
    for label, token in (("first", first), ("bot's refreshed", by_bot), ("worker's refreshed", by_worker)):
        secrets[f"the {label} access token"] = token.access_token
        secrets[f"the {label} refresh token"] = token.refresh_token
    assert given == first.access_token and forced["access_token"] == by_bot.access_token
    stack.stop("web")
    output = {name: stack.log(name) for name in ("web", "worker")}
    assert re.search(r"Booting worker", output["web"]) and "ready." in output["worker"], output
    found = [(label, name) for label, value in secrets.items() for name, text in output.items() if value in text]
    assert found == [], found
