"""The README's "Try it without a real provider", step by step, in a real browser at 1366x768: Control Room running
with its administrator signed in (step 1, `make run`), `manage.py demo_provider` (step 2, what `make demo` runs)
starting the demo provider and its connections, Connect on the authorization-code connection with the demo user
(3), a bot key for demo-bot (4), and the curl line of the key's page run as it is (5), answering a token the demo
provider accepts."""

import io
import json
import os
import re
import subprocess
import threading

import pytest
import requests
from django.core.management import call_command
from django.db import connection as database
from playwright.sync_api import expect

from connections.config.demo_provider import DEMO_PASSWORD, DEMO_USER
from connections.models import OAuthToken
from tests.support.servers import free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

README_STEPS = "Try it without a real provider"


@pytest.fixture
def make_demo(settings, live_server, tmp_path):
    """Step 2: the command `make demo` runs, in a thread of this process (it serves until told to stop), with the
    demo provider's data under a folder of this test."""
    settings.DEBUG = True  # a development checkout (make run's .env): the demo refuses to start otherwise
    settings.PUBLIC_URL = live_server.url
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"
    settings.VAR_DIR = tmp_path
    stop, output, failures = threading.Event(), io.StringIO(), []
    port = free_port()

    def run() -> None:
        try:
            call_command("demo_provider", port=port, stdout=output, until=stop)
        except Exception as exc:  # noqa: BLE001 - shown by the test, not lost in the thread
            failures.append(exc)
        finally:
            database.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(
        lambda: "Ctrl-C stops it" in output.getvalue() or not thread.is_alive(),
        90,
        "the demo provider to say it runs",
        interval=0.2,
    )
    assert "Ctrl-C stops it" in output.getvalue(), (failures, output.getvalue())
    yield f"http://127.0.0.1:{port}", output.getvalue()
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and failures == []
    with pytest.raises(requests.ConnectionError):  # Ctrl-C (here: stop) took the provider down with it
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_the_readme_try_it_steps_reach_a_first_bot_token(admin_page, live_server, make_demo):
    page, url = admin_page, live_server.url  # step 1: Control Room runs, its administrator signed in
    provider_url, said = make_demo  # step 2
    assert "Demo client credentials: Test passed" in said and "demo-bot" in said

    # step 3: Connections > Demo authorization code > Connect, sign in as demo, Authorize
    page.goto(f"{url}/admin/connections/connection/")
    page.locator("#result_list a", has_text="Demo authorization code").click()
    page.click("#connect-button")
    assert page.url.startswith(provider_url), page.url
    page.fill("#id_username", DEMO_USER)
    page.fill("#id_password", DEMO_PASSWORD)
    page.click("button:has-text('Sign in')")
    page.click("button:has-text('Authorize')")
    page.wait_for_url(re.compile(r".*/admin/connections/connection/\d+/change/$"))
    expect(page.locator(".field-status_display .readonly")).to_contain_text("Connected, expires in")

    # step 4: Bot keys > Add bot key, user demo-bot, Save
    page.goto(f"{url}/admin/connections/botkey/add/")
    page.select_option("#id_user", label="demo-bot")
    page.fill("#id_name", "first key")
    page.click("input[name=_save]")
    curl = page.locator("#bot-key-curl").inner_text()

    # step 5: that curl line, run as it is
    assert curl.startswith('curl -H "Authorization: Bearer crk_'), curl
    answer = subprocess.run(
        ["bash", "-c", f"{curl} --silent --show-error --fail"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert answer.returncode == 0, answer.stderr
    token = json.loads(answer.stdout)
    assert token["connection"] == "demo-authorization-code"
    assert token["access_token"] == OAuthToken.objects.get(connection__slug="demo-authorization-code").access_token
    who = requests.get(
        f"{provider_url}/api/me", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
    )
    assert who.status_code == 200


def test_the_readme_walks_these_steps():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    steps = readme.split(f"## {README_STEPS}\n", 1)[1].split("\n## ", 1)[0]
    for said in (
        "`make run`",
        "`make demo`",
        "Demo authorization code",
        "**Connect**",
        f"`{DEMO_USER}`",
        f"`{DEMO_PASSWORD}`",
        "**Authorize**",
        "`demo-bot`",
        "`curl`",
    ):
        assert said in steps, said
    assert re.findall(r"^(\d)\. ", steps, re.MULTILINE) == ["1", "2", "3", "4", "5"]
