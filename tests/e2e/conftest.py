"""A real headless Chromium (Debian's package) driven by Playwright against the live server."""

import os
import shutil
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make around it are
# synchronous and safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling Google's hosts, which this network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(executable):
        pytest.fail(f"Chromium not found at {executable}: apt-get install -y chromium (or set CHROMIUM_PATH).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


ROOT_PASSWORD = "root-password-1"  # the throwaway test administrator's


@pytest.fixture
def laptop_page(browser, live_server) -> Iterator[object]:
    """A 1366x768 window (the administrators' laptops), allowed the clipboard. The test fails on any error of the
    page's scripts, and on a static file of ours that does not load (the favicon, which the admin has none of,
    does not count)."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "response",
        lambda answer: errors.append(answer.url) if "/static/" in answer.url and answer.status >= 400 else None,
    )
    yield page
    context.close()
    assert errors == [], errors


def sign_in_as_root(page, url: str) -> User:
    """The first administrator (a superuser), signed in to the admin in this page."""
    root = User.objects.create_superuser("root", "root@example.com", ROOT_PASSWORD)
    page.goto(f"{url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", ROOT_PASSWORD)
    page.click("input[type=submit]")
    return root


@pytest.fixture
def admin_page(laptop_page, live_server) -> object:
    """laptop_page, signed in to the admin as the first administrator."""
    sign_in_as_root(laptop_page, live_server.url)
    return laptop_page


def choose(page, field: str, label: str) -> None:
    """Move an option across one of the admin's two-box selects."""
    page.select_option(f"#id_{field}_from", label=label)
    page.click(f"#id_{field}_add")
