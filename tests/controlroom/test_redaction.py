"""No secret in a log line, a page, an error body or an audit record, even with every logger at DEBUG."""

import copy
import io
import logging
import logging.config
import os
import subprocess
import sys
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from connections.endpoint.bot_keys import bot_key_create
from connections.engine.refresh import token_refresh
from connections.errors import ProviderError
from connections.models import AuditEvent, OAuthToken
from controlroom.logging import redact
from tests.conftest import PROVIDER_USER, authorize_and_store_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def debug_logs():
    """The project's own logging configuration, with every logger (requests-oauthlib's too) at DEBUG; its
    console handler writes into a buffer the test reads."""
    config = copy.deepcopy(settings.LOGGING)
    config["root"]["level"] = "DEBUG"
    for logger in config["loggers"].values():
        logger["level"] = "DEBUG"
    buffer = io.StringIO()
    config["handlers"]["console"]["stream"] = buffer
    logging.config.dictConfig(config)
    yield buffer
    logging.config.dictConfig(settings.LOGGING)


def test_the_whole_flow_leaks_no_secret(debug_logs, make_connection, manager_client, authserver):
    secrets: set[str] = set()
    seen: list[str] = []
    token_answers: list[str] = []  # 200s of the token endpoint: the access token is their point, nothing else

    def look(response) -> None:
        body = b"".join(response.streaming_content) if response.streaming else response.content
        seen.append(body.decode(errors="replace"))
        seen.append(str(response.headers))

    # connect, with PKCE, through the real server
    connection = make_connection(grant_type="authorization_code_pkce", pkce_required=True)
    secrets.add(connection.client_secret)
    response = manager_client.post(f"/oauth/connect/{connection.slug}/")
    look(response)
    callback = authserver.authorize_with_requests(response["Location"], *PROVIDER_USER)
    secrets.add(parse_qs(urlsplit(callback).query)["code"][0])
    look(manager_client.get(f"/oauth/callback/?{urlsplit(callback).query}"))
    token = OAuthToken.objects.get(connection=connection)
    secrets |= {token.access_token, token.refresh_token}

    # a bot fetches it, forces a refresh, and hits errors
    role = Group.objects.create(name="Bots")
    connection.roles.add(role)
    bot = role.user_set.create(username="bot")
    _, raw_key = bot_key_create(user=bot, name="leak test")
    secrets.add(raw_key)
    bot_client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    url = f"/api/v1/connections/{connection.slug}/token"
    token_answers.append(bot_client.get(url).content.decode())
    token_answers.append(bot_client.get(url, {"force_refresh": "true"}).content.decode())
    token.refresh_from_db()
    secrets |= {token.access_token, token.refresh_token}
    assert token.access_token in token_answers[-1]
    look(bot_client.get(url, {"min_validity": "oops"}))
    look(Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}x").get(url))
    # refresh failures, transient then permanent
    authserver.set_fault("status_500")
    with pytest.raises(ProviderError):
        token_refresh(token=token, actor_label="test")
    authserver.set_fault("invalid_grant")
    with pytest.raises(ProviderError):
        token_refresh(token=OAuthToken.objects.get(pk=token.pk), actor_label="test")
    look(bot_client.get(url, {"force_refresh": "true"}))

    # the pages an administrator looks at
    for page in (
        f"/admin/connections/connection/{connection.pk}/change/",
        "/admin/connections/connection/",
        "/admin/connections/auditevent/",
        "/admin/connections/auditevent/export.csv",
        "/admin/connections/botkey/",
    ):
        look(manager_client.get(page))

    logs = debug_logs.getvalue()
    assert "DEBUG" in logs and "requests_oauthlib" in logs  # the noisy loggers really were on
    assert_nothing_leaked(secrets, logs=logs, pages=seen, token_answers=token_answers, current=token.access_token)


def test_signing_with_a_private_key_leaks_neither_the_key_nor_an_assertion(
    debug_logs, make_connection, manager_client, authserver
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    connection = make_connection(
        public_key=public.decode(), client_auth_method="private_key_jwt", private_key=pem, client_secret=""
    )
    pages: list[str] = []
    token = authorize_and_store_token(manager_client, connection, authserver)
    token_refresh(token=token, actor_label="test")
    authserver.set_fault("invalid_grant")
    with pytest.raises(ProviderError):
        token_refresh(token=OAuthToken.objects.get(pk=token.pk), actor_label="test")
    for page in (f"/admin/connections/connection/{connection.pk}/change/", "/admin/connections/auditevent/"):
        pages.append(manager_client.get(page).content.decode())
    logs = debug_logs.getvalue()
    assert "client_assertion" in logs  # requests-oauthlib did log the request bodies
    key_lines = {line for line in pem.splitlines()[1:-1] if len(line) >= 8}
    assert_nothing_leaked(key_lines, logs=logs, pages=pages, token_answers=[], current="")
    assert "eyJ" not in logs  # no signed assertion either


def assert_nothing_leaked(
    secrets: set[str], *, logs: str, pages: list[str], token_answers: list[str], current: str
) -> None:
    """No secret in the logs, the audit log or a page; a token answer holds its own access token and no other."""
    audit = "\n".join(AuditEvent.objects.values_list("detail", flat=True))
    for secret in secrets:
        assert len(secret) >= 8
        assert secret not in logs, f"a secret reached the logs: {secret[:4]}…"
        assert secret not in audit
        for text in pages:
            assert secret not in text
    for answer in token_answers:
        for secret in secrets - {current} - {answer.split('"access_token": "')[1].split('"')[0]}:
            assert secret not in answer


@pytest.mark.parametrize(
    ("line", "hidden"),
    [
        ("Obtained token {'access_token': 'abc123xyz789', 'refresh_token': 'r3fr3sh'}", ["abc123xyz789", "r3fr3sh"]),
        ("body=grant_type=refresh_token&refresh_token=r3fr3sh&client_secret=s3cr3t-v4lue", ["r3fr3sh", "s3cr3t-v4lue"]),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", ["eyJhbGciOiJIUzI1NiJ9.payload.sig"]),
        ("key crk_0123456789ab_Zm9vYmFyYmF6cXV4cXV1eA used", ["Zm9vYmFyYmF6cXV4cXV1eA"]),
        ("proxy http://user:pr0xy-pass@proxy.example:3128", ["pr0xy-pass"]),
        ('{"code": "auth-c0de-123", "code_verifier": "v3rifier-abc"}', ["auth-c0de-123", "v3rifier-abc"]),
        ("client_assertion=eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln&client_id=app", ["eyJpc3MiOiJ4In0"]),
        ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEG\n-----END PRIVATE KEY-----", ["MIGHAgEAMBMGByqGSM49"]),
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkgyfW2 (cut short", ["MHcCAQEEIBkgyfW2"]),
    ],
)  # fmt: skip
def test_redact_hides_secrets_by_shape_and_by_name(line, hidden):
    redacted = redact(line)
    for secret in hidden:
        assert secret not in redacted
    assert "[redacted]" in redacted
    assert (
        redact("GET /api/v1/connections/salesforce-prod/token 200")
        == "GET /api/v1/connections/salesforce-prod/token 200"
    )


@pytest.mark.django_db(transaction=True)
def test_a_worker_and_beat_log_no_secret_with_every_logger_at_debug(
    make_stack, make_connection, manager_client, authserver
):
    # given a worker and beat with every logger at DEBUG (the libraries that print token bodies too), and a
    # connection whose token is due
    stack = make_stack(BEAT_INTERVAL=1, OUTBOUND_TIMEOUT=5)
    stack.env.update(DJANGO_SETTINGS_MODULE="tests.debug_logging_settings", LOG_LEVEL="DEBUG")
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    secrets = {connection.client_secret, *_token_values(connection)}
    stack.worker(loglevel="DEBUG")
    stack.beat(loglevel="DEBUG")
    # when the worker refreshes it (a success), then is refused (a permanent failure)
    _make_due(connection)
    stack.wait_until(lambda: _generation(connection) > 1, 30, "the worker's refresh")
    secrets |= _token_values(connection)
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    _make_due(connection)
    stack.wait_until(lambda: _state(connection) == "reauthorization_required", 30, "the refused refresh")
    stack.processes.stop_all()
    # then neither printed a secret, though the loggers that would were on
    worker, beat = stack.log("worker"), stack.log("beat")
    assert "Response headers were" in worker and "DEBUG" in beat, worker[-3000:]  # requests-oauthlib printed bodies
    for secret in secrets:
        assert secret not in worker, f"a secret reached the worker's log: {secret[:4]}…"
        assert secret not in beat, f"a secret reached beat's log: {secret[:4]}…"


def _token_values(connection) -> set[str]:
    token = OAuthToken.objects.get(connection=connection)
    return {token.access_token, token.refresh_token}


def _make_due(connection) -> None:
    OAuthToken.objects.filter(connection=connection).update(next_refresh_at=timezone.now() - timedelta(seconds=1))


def _generation(connection) -> int:
    return OAuthToken.objects.get(connection=connection).generation


def _state(connection) -> str:
    return OAuthToken.objects.get(connection=connection).state


def test_a_django_request_line_is_printed_once_and_redacted_under_debug(tmp_path):
    # given a process configured as `make run` configures it (DEBUG: Django adds a console handler of its own to
    # the "django" logger, which would print a second, unredacted copy of each line)
    script = (
        "import django, logging; django.setup(); "
        "logging.getLogger('django.request').warning('Not Found: /oauth/callback/?access_token=leaky-value-123')"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlroom.settings", "DEBUG": "true", "LOG_FORMAT": "text"}
    env.update(SECRET_KEY="x" * 50, CRYPTOGRAPHY_KEY="y" * 50, DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    # when a request's warning is logged
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    # then it is printed once, through the project's redacting formatter
    lines = [line for line in result.stderr.splitlines() if "Not Found" in line]
    assert len(lines) == 1, result.stderr
    assert "WARNING django.request" in lines[0] and "leaky-value-123" not in lines[0]
