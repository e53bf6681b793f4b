"""The loopback authorization server as the company's identity provider (tests.authserver.openid), and signing in
through it without a browser."""

from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from django.core.cache import cache
from django.test import Client

from tests.support.authserver import AuthServer

CLIENT_ID = "control-room-sso"
CLIENT_SECRET = "control-room-sso-secret-0123456789"


@dataclass
class IdentityProvider:
    server: AuthServer

    def person(self, username: str, *, groups: list[str] | None = None, email: str = "") -> tuple[str, str]:
        """A person at the provider, with these groups; returns (username, password)."""
        password = f"{username}-idp-password"
        self.server.set_person(username, password, email=email or f"{username}@corp.example", groups=groups or [])
        return username, password


@pytest.fixture
def identity_provider(authserver: AuthServer, settings, db) -> IdentityProvider:
    """Control Room configured to sign people in with the loopback server (its roles map set by each test)."""
    redirect_uri = f"{settings.PUBLIC_URL}/oidc/callback/"
    authserver.create_openid_client(
        CLIENT_ID, CLIENT_SECRET, [redirect_uri], [f"{settings.PUBLIC_URL}/accounts/login/"]
    )
    settings.OIDC_ISSUER, settings.OIDC_ENABLED = authserver.issuer, True
    settings.OIDC_CLIENT_ID, settings.OIDC_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    settings.OIDC_PROVIDER_NAME = "Loopback IdP"
    settings.OIDC_ROLE_MAP = {}
    cache.clear()  # the provider's discovery document and keys, as another test's server had them
    return IdentityProvider(authserver)


def sign_in(client: Client, provider: IdentityProvider, username: str, password: str, *, next_url: str = ""):
    """Start at /oidc/authenticate/, sign in at the provider, and follow its redirect to the callback: the
    callback's response."""
    started = client.get("/oidc/authenticate/", {"next": next_url} if next_url else {})
    assert started.status_code == 302, started
    location = provider.server.authorize_with_requests(started["Location"], username, password)
    parts = urlsplit(location)
    return client.get(f"{parts.path}?{parts.query}")
