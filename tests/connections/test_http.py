"""The HTTP edge's own logic (connections.http): who a request comes from, behind the proxies an operator
trusts."""

import pytest
from django.test import Client, RequestFactory

from connections.http import client_address
from connections.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "expected"),
    [
        (0, "203.0.113.7", "10.0.0.2"),  # no proxy trusted: the header is anyone's to write
        (1, "203.0.113.7", "203.0.113.7"),  # the TLS proxy appended the client it saw
        (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # a client's own header cannot choose its address
        (2, "6.6.6.6, 203.0.113.7, 10.0.0.1", "203.0.113.7"),  # a load balancer, then the TLS proxy
        (1, "", "10.0.0.2"),  # the proxy sent no header: its own address, not a guess
        (1, "not-an-address", "10.0.0.2"),  # a proxy that writes something else is not believed
        (1, "2001:db8::7", "2001:db8::7"),
    ],
)
def test_the_client_address_is_read_from_the_right_behind_trusted_proxies(settings, proxies, forwarded_for, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded_for)
    assert client_address(request) == expected


def test_behind_the_proxy_the_audit_and_the_login_lockout_see_the_client(settings, admin_user):
    # given one TLS proxy in front (every request comes from its address, 10.0.0.2)
    settings.TRUSTED_PROXY_COUNT = 1
    attacker = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.66")
    colleague = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7")
    # when someone guesses a password until locked out
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attacker.post("/admin/login/", {"username": "admin", "password": "wrong"})
    attacker.get("/api/v1/connections/anything/token", HTTP_AUTHORIZATION="Bearer crk_000000000000_guess")
    # then only that client is locked out, and the audit log names it, not the proxy
    assert attacker.post("/admin/login/", {"username": "admin", "password": "password"}).status_code == 429
    response = colleague.post("/admin/login/", {"username": "admin", "password": "password", "next": "/admin/"})
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="token_request").remote_addr == "198.51.100.66"
