"""The admin's Outbound page: the outbound policy in effect (the proxy's credentials masked) and a URL check that
says what a call would meet, by connections.outbound.policy's own checks, without calling the URL."""

import re
import select
import socket
from collections.abc import Iterator

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PAGE = "/admin/outbound/"


@pytest.fixture
def checker_client(make_user) -> Client:
    """Who may check a URL: those who manage connections."""
    client = Client()
    client.force_login(make_user("outbound-checker", perms=("manage_connections",), staff=True))
    return client


@pytest.fixture
def viewer_client(make_user) -> Client:
    client = Client()
    client.force_login(make_user("outbound-viewer", perms=("view_connections",), staff=True))
    return client


@pytest.fixture
def listening_port() -> Iterator[socket.socket]:
    """A loopback port that listens but never accepts: a connection to it would wait in its backlog."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once it is closed


def _nobody_connected(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0)
    return not readable


def verdict(client: Client, url: str) -> tuple[str, str]:
    response = client.get(PAGE, {"url": url})
    assert response.status_code == 200
    found = re.search(
        r'<div id="verdict" class="\w+" data-outcome="(\w+)">(.*?)</div>', response.content.decode(), re.S
    )
    assert found, "the page shows no verdict"
    return found.group(1), " ".join(found.group(2).split())


def test_only_staff_who_may_view_connections_see_it(make_user, viewer_client, manager_client):
    assert Client().get(PAGE)["Location"].startswith("/admin/login/")
    member = Client()
    member.force_login(make_user("not-staff", perms=("view_connections",)))
    assert member.get(PAGE)["Location"].startswith("/admin/login/")
    staff_without = Client()
    staff_without.force_login(make_user("staff-without", staff=True))
    assert staff_without.get(PAGE).status_code == 403
    assert viewer_client.get(PAGE).status_code == 200
    assert manager_client.get(PAGE).status_code == 200


def test_it_shows_the_settings_in_effect_with_the_proxy_credentials_masked(viewer_client, settings):
    settings.OUTBOUND_PROXY_URL = "http://proxy-user:pr0xy-s3cret@proxy.internal:3128"
    settings.OUTBOUND_PROXY_BYPASS = ["idp.internal", "10.0.0.0/8"]
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = ["idp.internal"]
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    settings.OUTBOUND_TIMEOUT = 7.5

    page = viewer_client.get(PAGE).content.decode()

    assert "http://***:***@proxy.internal:3128" in page
    assert "pr0xy-s3cret" not in page and "proxy-user" not in page
    assert "idp.internal, 10.0.0.0/8" in page
    assert "7.5 s" in page and "1024 KiB" in page
    for variable in (
        "OUTBOUND_PROXY_URL",
        "OUTBOUND_PROXY_BYPASS",
        "OUTBOUND_HTTP_ALLOWED_HOSTS",
        "OUTBOUND_BLOCK_PRIVATE_ADDRESSES",
        "OUTBOUND_TIMEOUT",
    ):
        assert f"<code>{variable}</code>" in page
    assert re.search(r"Private-address guard</th><td class=\"value\">On<", page)


def test_without_a_proxy_or_allowed_hosts_it_says_so(viewer_client, settings):
    settings.OUTBOUND_PROXY_URL = ""
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = False
    page = viewer_client.get(PAGE).content.decode()
    assert "None: every call goes directly" in page and "No host: https only" in page
    assert re.search(r"Private-address guard</th><td class=\"value\">Off<", page)


def test_plain_http_to_loopback_is_refused_unless_allowed_and_nothing_is_sent(checker_client, settings, listening_port):
    # given a loopback port where a call would be noticed, and https only
    port = listening_port.getsockname()[1]
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = False
    settings.OUTBOUND_PROXY_URL = ""

    outcome, text = verdict(checker_client, f"http://127.0.0.1:{port}/token")
    assert outcome == "refused_https" and "Refused by the https policy" in text
    assert "OUTBOUND_HTTP_ALLOWED_HOSTS" in text

    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    outcome, text = verdict(checker_client, f"http://127.0.0.1:{port}/token")
    assert outcome == "direct" and "no forward proxy is set" in text
    assert _nobody_connected(listening_port)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://127.0.0.1:{port}/token", "a loopback"),
        ("https://10.1.2.3/token", "a private"),
        ("https://192.168.0.10/token", "a private"),
        ("https://169.254.169.254/latest/meta-data/", "a link-local"),
        ("https://100.64.0.1/token", "a non-public"),
        ("https://[::ffff:10.0.0.1]/token", "a private"),
    ],
)
def test_the_private_address_guard_refuses_private_addresses(checker_client, settings, listening_port, url, kind):
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    url = url.format(port=listening_port.getsockname()[1])

    outcome, text = verdict(checker_client, url)

    assert outcome == "refused_private" and f"it resolves to {kind} address" in text
    assert _nobody_connected(listening_port)

    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = False
    assert verdict(checker_client, url)[0] == "direct"


def test_an_allowed_host_is_exempt_from_the_guard(checker_client, settings):
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    settings.OUTBOUND_PROXY_URL = ""
    assert verdict(checker_client, f"http://127.0.0.1:{_closed_port()}/")[0] == "direct"


def test_an_https_host_goes_through_the_proxy_or_directly_per_the_bypass_list(checker_client, settings):
    # given a proxy that is not there (a closed port): the verdict must not need it
    proxy_port = _closed_port()
    settings.OUTBOUND_PROXY_URL = f"http://proxy-user:pr0xy-s3cret@127.0.0.1:{proxy_port}"
    settings.OUTBOUND_PROXY_BYPASS = ["idp.internal", "203.0.113.0/24"]
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = False

    outcome, text = verdict(checker_client, "https://login.example.com/oauth/token")
    assert outcome == "proxy" and f"through http://***:***@127.0.0.1:{proxy_port}" in text
    assert "pr0xy-s3cret" not in text

    outcome, text = verdict(checker_client, "https://sso.idp.internal/token")
    assert outcome == "direct" and "sso.idp.internal is in OUTBOUND_PROXY_BYPASS" in text
    assert verdict(checker_client, f"https://203.0.113.7:{_closed_port()}/token")[0] == "direct"


@pytest.mark.parametrize(
    ("typed", "outcome", "words"),
    [
        ("login.example.com/token", "not_a_url", "is not a URL"),
        ("https://", "not_a_url", "is not a URL"),
        ("https://[::1/token", "not_a_url", "not a valid URL"),
        ("https://login.example.com:99999/token", "not_a_url", "port is not a number"),
        ("https://login.example.com:abc/token", "not_a_url", "port is not a number"),
        ("ftp://files.example.com/x", "refused_https", "must use https"),
        ("javascript:alert(1)", "not_a_url", "is not a URL"),
    ],
)
def test_what_is_not_a_url_or_not_https_is_called_so(checker_client, settings, typed, outcome, words):
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    got, text = verdict(checker_client, typed)
    assert got == outcome and words in text


def test_the_typed_url_is_escaped_and_kept_in_the_form(checker_client):
    typed = 'https://login.example.com/"><script>alert(1)</script>'
    page = checker_client.get(PAGE, {"url": typed}).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert 'value="https://login.example.com/&quot;&gt;&lt;script&gt;' in page


def test_an_unresolvable_name_with_the_guard_on_would_fail_now(checker_client, settings):
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    outcome, text = verdict(checker_client, "https://no-such-host.invalid/token")  # RFC 6761: never resolves
    assert outcome == "unresolved" and "Could not resolve no-such-host.invalid" in text


def test_checking_a_url_is_for_those_who_manage_connections(viewer_client):
    # given someone who may view connections only: the check looks host names up, so they are not offered it
    page = viewer_client.get("/admin/outbound/", {"url": "https://internal.example.invalid/"}).content.decode()
    assert 'id="url-check"' not in page and 'id="verdict"' not in page
    assert "Checking a URL is for those who manage connections" in page
