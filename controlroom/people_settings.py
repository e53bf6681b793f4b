"""The People settings of controlroom.settings (star-imported by it once the .env file is read, people_settings_apply
called at its end): sign-in with the company's identity provider (OpenID Connect with mozilla-django-oidc;
connections.people, docs/sso.md), password sign-in, sessions. From the environment, like every setting; a value
that cannot work stops start-up with one sentence."""

from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from controlroom.env import number

env = environ.Env()


__all__ = [
    "AXES_SENSITIVE_PARAMETERS",
    "AXES_WHITELIST_CALLABLE",
    "BREAK_GLASS_USERNAME",
    "OIDC_CLIENT_AUTH_METHOD",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_ENABLED",
    "OIDC_EXEMPT_URLS",
    "OIDC_GROUPS_CLAIM",
    "OIDC_ISSUER",
    "OIDC_PROVIDER_NAME",
    "OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS",
    "OIDC_RENEW_SECONDS",
    "OIDC_ROLE_MAP",
    "OIDC_RP_CLIENT_ID",
    "OIDC_RP_CLIENT_SECRET",
    "OIDC_RP_SCOPES",
    "OIDC_SCOPES",
    "OIDC_STAFF_GROUPS",
    "OIDC_SUPERUSER_GROUPS",
    "OIDC_USE_NONCE",
    "OIDC_USE_PKCE",
    "PASSWORD_SIGN_IN",
    "PASSWORD_SIGN_IN_ALLOWS",
    "SESSION_MAX_HOURS",
    "people_settings_apply",
]


def _role_map(text: str) -> dict[str, list[str]]:
    """OIDC_ROLE_MAP: group=Role name;other-group=Other role (a group may be named more than once, for several)."""
    mapping: dict[str, list[str]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        group, equals, role = (piece.strip() for piece in entry.partition("="))
        if not (group and equals and role):
            raise ImproperlyConfigured(f"OIDC_ROLE_MAP: {entry!r} is not group=Role name (entries separated by ;).")
        mapping.setdefault(group, []).append(role)
    return mapping


def _groups(name: str) -> list[str]:
    return [group.strip() for group in env.list(name, default=[]) if group.strip()]


# The identity provider: its issuer (the endpoints come from its discovery document) and this application there.
OIDC_ISSUER = env.str("OIDC_ISSUER", default="").strip()
OIDC_ENABLED = bool(OIDC_ISSUER)
OIDC_CLIENT_ID = env.str("OIDC_CLIENT_ID", default="")
OIDC_CLIENT_SECRET = env.str("OIDC_CLIENT_SECRET", default="")
OIDC_CLIENT_AUTH_METHOD = env.str("OIDC_CLIENT_AUTH_METHOD", default="client_secret_basic")
if OIDC_CLIENT_AUTH_METHOD not in ("client_secret_basic", "client_secret_post"):
    raise ImproperlyConfigured("OIDC_CLIENT_AUTH_METHOD must be client_secret_basic or client_secret_post.")
if OIDC_ENABLED and not (OIDC_CLIENT_ID and OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured("OIDC_ISSUER is set: set OIDC_CLIENT_ID and OIDC_CLIENT_SECRET too (docs/sso.md).")
if OIDC_ENABLED and urlsplit(OIDC_ISSUER).scheme not in ("http", "https"):
    raise ImproperlyConfigured(
        f"OIDC_ISSUER must be an https URL, such as https://login.example.com, not {OIDC_ISSUER!r}."
    )
OIDC_SCOPES = " ".join(dict.fromkeys(["openid", *env.str("OIDC_SCOPES", default="openid email profile").split()]))
# The claim holding the person's groups (in the ID token or at userinfo), and the roles each group gives.
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="groups")
OIDC_ROLE_MAP = _role_map(env.str("OIDC_ROLE_MAP", default=""))
# Groups whose members may open the admin (staff), and are superusers: never from a claim unless listed here.
OIDC_STAFF_GROUPS = _groups("OIDC_STAFF_GROUPS")
OIDC_SUPERUSER_GROUPS = _groups("OIDC_SUPERUSER_GROUPS")
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="single sign-on")

# on | off | break-glass:<username> (password sign-in for that one account only).
PASSWORD_SIGN_IN = env.str("PASSWORD_SIGN_IN", default="on").strip()
_mode, _, BREAK_GLASS_USERNAME = PASSWORD_SIGN_IN.partition(":")
if _mode not in ("on", "off", "break-glass") or (_mode == "break-glass") != bool(BREAK_GLASS_USERNAME):
    raise ImproperlyConfigured(f"PASSWORD_SIGN_IN must be on, off or break-glass:<username>, not {PASSWORD_SIGN_IN!r}.")
if _mode != "on" and not OIDC_ENABLED:
    raise ImproperlyConfigured("PASSWORD_SIGN_IN is not on, but OIDC_ISSUER is not set: nobody could sign in.")
PASSWORD_SIGN_IN_ALLOWS = {"on": "everyone", "off": "nobody"}.get(_mode, "break-glass")

# How often a signed-in person's session is checked at the identity provider (a silent prompt=none sign-in: it
# ends the session when the provider's has ended), and the longest any session lasts (0: no limit).
OIDC_RENEW_SECONDS = int(number("OIDC_RENEW_SECONDS", 900, minimum=60))
SESSION_MAX_HOURS = number("SESSION_MAX_HOURS", 12, whole=False, unit="hours")

# mozilla-django-oidc's own settings (connections.people gives it the endpoints and the redirect URI,
# <PUBLIC_URL>/oidc/callback/).
OIDC_RP_CLIENT_ID = OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = OIDC_CLIENT_SECRET
OIDC_RP_SCOPES = OIDC_SCOPES
OIDC_USE_NONCE = True
OIDC_USE_PKCE = True
OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS = OIDC_RENEW_SECONDS
OIDC_EXEMPT_URLS = ["logout", "login", "admin:login", "admin:logout", "livez", "readyz", "healthz", "metrics"]

# django-axes records a refused sign-in's callback like a failed login, with its query: the authorization code and
# state are masked there (a code is short-lived and single-use, but no credential belongs in a record).
AXES_SENSITIVE_PARAMETERS = ["code", "state", "code_verifier", "nonce", "session_state"]
# ... but a refused callback is not counted by django-axes at all: it has no username, so axes would lock out every
# person signing in from the same address after a few refusals of anyone's; connections.people counts and audits
# those refusals itself.
AXES_WHITELIST_CALLABLE = "connections.people.views.sign_in_callback_not_counted"


def people_settings_apply(backends: list[str], middleware: list[str], templates: list[dict[str, Any]]) -> None:
    """Adds the sign-in backend, the session limits (before django-axes, which must stay last) and the sign-in
    pages' context to the settings' lists."""
    backends.append("connections.people.backend.IdentityProviderSignIn")
    middleware.insert(middleware.index("axes.middleware.AxesMiddleware"), "connections.people.sessions.SessionLimits")
    templates[0]["OPTIONS"]["context_processors"].append("connections.people.pages.sign_in_options")
