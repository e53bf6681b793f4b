"""LOG_FORMAT=json: one JSON object a line — time, level, logger, message, the request's id and the connection
the line is about — redacted like the text lines; the default stays text."""

import copy
import io
import json
import logging.config

import pytest
from django.conf import settings
from django.test import Client

from connections.engine.refresh import token_refresh
from connections.errors import ProviderError
from tests.conftest import shared_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_logs():
    config = copy.deepcopy(settings.LOGGING)
    config["handlers"]["console"]["formatter"] = "json"
    config["root"]["level"] = "DEBUG"
    for logger in config["loggers"].values():
        logger["level"] = "DEBUG"  # requests-oauthlib's bodies too: redaction must hold in JSON as well
    buffer = io.StringIO()
    config["handlers"]["console"]["stream"] = buffer
    logging.config.dictConfig(config)
    yield buffer
    logging.config.dictConfig(settings.LOGGING)


def test_each_line_is_an_object_with_the_request_and_the_connection(json_logs, authorized_connection, authserver):
    # a request with its own id that logs (Django's 404 warning), and a refresh that fails and logs
    response = Client().get("/no-such-page/", HTTP_X_REQUEST_ID="bot-run-42")
    assert response["X-Request-ID"] == "bot-run-42"
    token = shared_token(authorized_connection)
    authserver.set_fault("status_500")
    with pytest.raises(ProviderError):
        token_refresh(token=token, actor_label="test")
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]  # each line parses alone
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    not_found = next(line for line in lines if line["logger"] == "django.request")
    assert (not_found["level"], not_found["request_id"]) == ("WARNING", "bot-run-42")
    about = [line for line in lines if line.get("connection") == authorized_connection.slug]
    assert about and any(line["logger"].startswith("requests_oauthlib") for line in about)
    text = json_logs.getvalue()
    assert token.refresh_token not in text and authorized_connection.client_secret not in text


def test_a_request_without_a_usable_id_gets_one(json_logs):
    first = Client().get("/livez", HTTP_X_REQUEST_ID="not ok; <script>")
    second = Client().get("/livez")
    assert len(first["X-Request-ID"]) == 32 and first["X-Request-ID"] != second["X-Request-ID"]


def test_the_format_must_be_text_or_json(monkeypatch):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='controlroom.settings'; django.setup()",
        ],
        env={**__import__("os").environ, "LOG_FORMAT": "xml", "ENV_FILE": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "LOG_FORMAT must be text or json" in result.stderr
