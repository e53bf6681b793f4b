"""The connection's list and change page in a real browser at 1366x768: a failed Save and test stays on the page
and in the list (the error, when, how many in a row), the status filter clicked, and the bot call shown on the
page answering a real bot key."""

import re

import pytest
import requests
from playwright.sync_api import expect

from connections import services
from connections.models import OAuthToken
from tests.e2e.conftest import sign_in_as_root
from tests.support.bots import make_bot

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MOMENT = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"  # a date with seconds
# How many lines a cell's text takes in the browser: one box per line.
LINES_OF_TEXT = "(cell) => { const range = document.createRange(); range.selectNodeContents(cell); "
LINES_OF_TEXT += "return new Set([...range.getClientRects()].map((box) => Math.round(box.top))).size; }"


def test_a_failed_test_stays_on_the_page_the_filter_finds_it_and_the_bot_call_answers(
    laptop_page, live_server, make_connection, authserver, settings
):
    page, url = laptop_page, live_server.url
    settings.PUBLIC_URL = url  # the address bots use
    # given an administrator, a client-credentials connection whose secret they are about to mistype, and a
    # second one that works, invited to a bot's role
    failing = make_connection(grant_type="client_credentials", scopes="read", name="Ledger API")
    working = make_connection(grant_type="client_credentials", scopes="read", name="Payroll API")
    bot = make_bot("payroll-bot", "Payroll bots", "payroll runner")
    bot.invite(working)
    root = sign_in_as_root(page, url)
    services.connection_test(connection=working, actor=root)

    # when they type a wrong client secret and click Save and test connection, twice
    page.goto(f"{url}/admin/connections/connection/{failing.pk}/change/")
    for _ in range(2):
        page.fill("#id_client_secret", "not-the-registered-secret")
        page.click("input[name=_test]")
        expect(page.locator(".messagelist .warning")).to_contain_text("invalid_client")

    # then the page and the list keep the failure; no token was stored
    _failure_is_on_the_page(page)
    assert not OAuthToken.objects.filter(connection=failing).exists()
    page.goto(f"{url}/admin/connections/connection/")
    _failure_is_in_the_list(page, "Ledger API")

    # and clicking the status filter finds each connection by its status
    _status_filter_clicked(page, "Not connected", "Ledger API")
    _status_filter_clicked(page, "Connected", "Payroll API")

    # and the working connection's page shows the call a bot makes, which answers a real bot key
    page.locator("#result_list a", has_text="Payroll API").click()
    _bot_call_answers(page, f"{url}/api/v1/connections/{working.slug}/token", bot.raw_key, authserver)


def _failure_is_on_the_page(page) -> None:
    """The status in the failure colour, the error with its time and count, never the secret typed."""
    status = page.locator(".field-status_display .readonly .connection-failed")
    expect(status).to_have_text("Not connected — last attempt failed")
    error = page.locator(".field-last_error_display .readonly")
    expect(error).to_contain_text("Save and test: ")
    expect(error).to_contain_text("invalid_client")
    expect(error).to_have_text(re.compile(rf"\({MOMENT}; 2 failures in a row\)"))
    assert "not-the-registered-secret" not in page.content()
    red = status.evaluate("(element) => getComputedStyle(element).color")
    assert red == error.locator(".connection-failed").evaluate("(element) => getComputedStyle(element).color")
    assert red != page.locator(".field-name label").evaluate("(element) => getComputedStyle(element).color")


def _failure_is_in_the_list(page, name: str) -> None:
    """The row says it too, in the same colour; at 1366 px with both sidebars open the list fits (no column
    pushed off-screen) and the token type stays on one line."""
    row = page.locator("#result_list tbody tr", has_text=name)
    status = row.locator(".field-status_column")
    expect(status.locator(".list-status .connection-failed")).to_have_text("Not connected — last attempt failed")
    expect(status.locator(".last-error.connection-failed")).to_contain_text("invalid_client")
    expect(status).to_have_text(re.compile(rf"invalid_client.*\({MOMENT}; 2 failures in a row\)"))
    for cell in page.locator("#result_list td.field-token_type").all():
        assert cell.evaluate(LINES_OF_TEXT) == 1, cell.inner_text()
    overflow = page.locator("#changelist .results").evaluate("element => element.scrollWidth - element.clientWidth")
    assert overflow <= 0, f"the connection list is {overflow} px wider than its place at 1366"


def _status_filter_clicked(page, status: str, only: str) -> None:
    page.locator("#changelist-filter a", has_text=re.compile(rf"^{status}$")).click()
    code = status.lower().replace(" ", "_")
    expect(page).to_have_url(re.compile(rf"[?&]status={code}(&|$)"))
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list tbody")).to_contain_text(only)


def _bot_call_answers(page, token_url: str, raw_key: str, authserver) -> None:
    """The curl line, copied with its button, names the token URL; called with a real bot key, that URL answers
    a token the provider accepts."""
    curl = page.locator("#bot-call-curl").inner_text()
    assert curl == f'curl -H "Authorization: Bearer $CONTROLROOM_KEY" {token_url}'
    page.locator(".bot-call .copy-button[data-copy-from=bot-call-curl]").click()
    expect(page.locator(".bot-call .copy-button[data-copy-from=bot-call-curl]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == curl
    answer = requests.get(curl.split()[-1], headers={"Authorization": f"Bearer {raw_key}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert authserver.whoami(answer.json()["access_token"]).status_code == 200
