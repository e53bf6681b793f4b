"""Signing in with the identity provider (the loopback server as OpenID Provider): people are created on first
sign-in and found again by `sub`, and a sign-in whose ID token is not what it must be is refused with a page that
says why."""

import html
from urllib.parse import parse_qs, urlsplit

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client

from connections.models import AuditEvent, PersonIdentity
from tests.connections.people.conftest import sign_in


def test_first_sign_in_creates_the_person_and_the_next_finds_them_by_sub(identity_provider):
    # given a person at the identity provider
    username, password = identity_provider.person("dana", email="dana@corp.example")

    # when they sign in twice, their e-mail changing at the provider in between
    client = Client()
    first = sign_in(client, identity_provider, username, password)
    identity_provider.server.set_person(username, password, email="dana.new@corp.example")
    second = sign_in(Client(), identity_provider, username, password)

    # then one user holds both sign-ins, with no password of its own, and the newer e-mail
    assert first.status_code == second.status_code == 302
    assert first["Location"] == "/connections/mine/"
    identity = PersonIdentity.objects.get()
    user = identity.user
    assert (user.username, user.email) == ("dana", "dana.new@corp.example")
    assert not user.has_usable_password() and not user.is_staff and not user.is_superuser
    assert identity.issuer == identity_provider.server.issuer and identity.last_signed_in_at is not None
    assert client.get("/connections/mine/").status_code == 200
    assert AuditEvent.objects.filter(action="sign_in", outcome="success").count() == 3  # created, signed in x2


def test_a_local_user_with_the_same_name_or_e_mail_is_not_taken_over(identity_provider):
    # given a local account named as the person at the provider, with their e-mail
    User.objects.create_user("erin", email="erin@corp.example", password="local-password-1")
    username, password = identity_provider.person("erin", email="erin@corp.example")

    # when the person signs in with the identity provider
    sign_in(Client(), identity_provider, username, password)

    # then they get an account of their own
    assert PersonIdentity.objects.get().user.username == "erin-2"


@pytest.mark.parametrize("reserved", ["admin", "ops-admin", "break-glass"])
def test_a_person_never_gets_the_administrators_or_the_break_glass_username(
    identity_provider, settings, monkeypatch, reserved
):
    # given the administrator's and the break-glass account's names, neither account made yet
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops-admin")
    settings.BREAK_GLASS_USERNAME = "break-glass"
    username, password = identity_provider.person(reserved)

    # when a person with one of those names at the identity provider signs in for the first time
    sign_in(Client(), identity_provider, username, password)

    # then they get another name
    assert PersonIdentity.objects.get().user.username == f"{reserved}-2"


def test_the_authorization_request_uses_pkce_nonce_and_the_registered_redirect_uri(identity_provider, settings):
    started = Client().get("/oidc/authenticate/")
    query = parse_qs(urlsplit(started["Location"]).query)
    assert started["Location"].startswith(identity_provider.server.authorize_url)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["nonce"][0] and query["state"][0]
    assert query["redirect_uri"] == [f"{settings.PUBLIC_URL}/oidc/callback/"]
    assert query["scope"] == ["openid email profile"]


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("audience", "issued to another application"),
        ("nonce", "another nonce"),
        ("expired", "has expired"),
        ("signature", "signature does not verify"),
        ("issuer", "issued by another issuer"),
        ("azp", "its azp is not OIDC_CLIENT_ID"),
        ("algorithm-none", "signed with 'none', an algorithm not accepted"),
        ("algorithm-hs256", "signed with 'HS256', an algorithm not accepted"),
    ],
)
def test_a_spoilt_id_token_is_refused_with_a_page_that_says_why(identity_provider, fault, said):
    # given a person, and an identity provider whose next ID token is spoilt
    username, password = identity_provider.person("frank")
    identity_provider.server.spoil_next_id_token(fault)

    # when they sign in
    client = Client()
    answer = sign_in(client, identity_provider, username, password)

    # then nobody is signed in, the page says why, and the refusal is audited
    assert answer.status_code == 403
    assert said in html.unescape(answer.content.decode())
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="frank").exists()
    refused = AuditEvent.objects.get(action="sign_in", outcome="failure")
    assert said in refused.detail


def test_a_callback_without_a_sign_in_started_here_is_refused(identity_provider):
    answer = Client().get("/oidc/callback/", {"code": "made-up", "state": "made-up"})
    assert answer.status_code == 403
    assert "not started in this browser" in answer.content.decode()


def test_without_an_issuer_there_is_no_single_sign_on(settings, db):
    settings.OIDC_ENABLED = False
    assert Client().get("/oidc/authenticate/").status_code == 404
    assert "Sign in with" not in Client().get("/accounts/login/").content.decode()


def test_refused_sign_ins_are_not_counted_by_django_axes_against_the_address(identity_provider, settings):
    # given as many refused sign-ins from one address as django-axes allows failed logins (several people's)
    for number in range(settings.AXES_FAILURE_LIMIT + 1):
        username, password = identity_provider.person(f"refused{number}")
        identity_provider.server.spoil_next_id_token("audience")
        assert sign_in(Client(), identity_provider, username, password).status_code == 403

    # when someone else signs in from the same address
    username, password = identity_provider.person("quinn")
    client = Client()
    answer = sign_in(client, identity_provider, username, password)

    # then they are signed in (not locked out with 429), and the refusals were audited by Control Room instead
    assert answer.status_code == 302 and "_auth_user_id" in client.session
    assert not AccessAttempt.objects.exists()
    assert AuditEvent.objects.filter(action="sign_in", outcome="failure").exists()


def test_the_refusal_page_names_only_known_provider_errors(identity_provider):
    client = Client()
    known = client.get("/oidc/callback/", {"error": "temporarily_unavailable", "state": "s"}).content.decode()
    made_up = client.get("/oidc/callback/", {"error": "Call +1 555 0100 to unlock your account"}).content.decode()
    assert "Loopback IdP refused the sign-in (temporarily_unavailable)." in known
    assert "Loopback IdP refused the sign-in." in made_up and "555" not in made_up
