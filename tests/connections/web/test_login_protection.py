import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("login_url", ["/admin/login/", "/accounts/login/"])
def test_repeated_failed_logins_lock_the_account_from_that_address(login_url, admin_user, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post(login_url, {"username": "admin", "password": "wrong"})
        assert response.status_code == 200  # the login form again, with its error
    assert client.post(login_url, {"username": "admin", "password": "wrong"}).status_code == 429
    # Now even the right password is refused, with a page that says why.
    response = client.post(login_url, {"username": "admin", "password": "password"})
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.content.decode()
    # The same account from another address is not locked out by someone else's guessing.
    other = Client(REMOTE_ADDR="10.0.0.9")
    response = other.post(login_url, {"username": "admin", "password": "password", "next": "/admin/"})
    assert response.status_code == 302


def test_a_successful_login_resets_the_count(admin_user, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/admin/login/", {"username": "admin", "password": "wrong"})
    assert client.post("/admin/login/", {"username": "admin", "password": "password"}).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/admin/login/", {"username": "admin", "password": "wrong"})
    assert client.post("/admin/login/", {"username": "admin", "password": "password"}).status_code == 302


def test_security_headers(admin_client):
    response = admin_client.get("/admin/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
