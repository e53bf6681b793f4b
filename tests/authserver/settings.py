"""Settings of the loopback OAuth 2.0 authorization server used only by the tests.

Self-contained on purpose: nothing here imports Control Room code, so the server keeps
working while the application's own settings are being changed. Configured from env:

- AUTHSERVER_DB: path of the SQLite file (the launcher makes a temp file and migrates it).
- AUTHSERVER_CONTROL_KEY: shared secret for the /_control/ API (empty = control API refuses all).
- AUTHSERVER_ACCESS_TOKEN_LIFETIME: access token lifetime in seconds (default 3600).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# Test-only server on loopback; the key only signs its own session cookies.
SECRET_KEY = os.environ.get("AUTHSERVER_SECRET_KEY", "authserver-test-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

CONTROL_KEY = os.environ.get("AUTHSERVER_CONTROL_KEY", "")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "oauth2_provider",
    "tests.authserver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

# Signed-cookie sessions: no session table, fewer SQLite writes per login.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

ROOT_URLCONF = "tests.authserver.urls"
WSGI_APPLICATION = "tests.authserver.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Listed first so our login/consent templates win over DOT's own.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("AUTHSERVER_DB", str(BASE_DIR / "authserver.sqlite3")),
        "OPTIONS": {
            # Several gunicorn threads write at once (tokens, counters): wait for the lock
            # instead of failing, take it up front in transactions, and let readers run
            # alongside the writer (WAL).
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Test-only: a fast hasher keeps every token request (DOT checks the hashed client secret)
# and every login cheap. Secrets and passwords are still hashed and really checked.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AUTH_PASSWORD_VALIDATORS: list[dict] = []

LOGIN_URL = "/accounts/login/"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True


def pkce_required(client_id: str) -> bool:
    """DOT's PKCE_REQUIRED callable: per client, from the flag set by POST /_control/clients."""
    # Imported here: settings are loaded before the app registry is ready.
    from tests.authserver.models import ClientFlags

    return ClientFlags.objects.filter(client_id=client_id, pkce_required=True).exists()


PUBLIC_URL = os.environ.get("AUTHSERVER_PUBLIC_URL", "http://127.0.0.1")

OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("AUTHSERVER_ACCESS_TOKEN_LIFETIME", "3600")),
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 300,
    # Refresh tokens are single use; presenting a rotated one is rejected (invalid_grant)
    # and, with reuse protection, revokes the whole token family.
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    # PKCE is always verified when the client sent a challenge; it is only *required*
    # for clients created with pkce_required=True.
    "PKCE_REQUIRED": pkce_required,
    "SCOPES_BACKEND_CLASS": "tests.authserver.oauth.AnyScopes",
    "OAUTH2_VALIDATOR_CLASS": "tests.authserver.oauth.Validator",
    "SCOPES": {"read": "Read", "write": "Write"},
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
    # The Device Code grant (RFC 8628): where a person enters the user code (this server's own URL, given by
    # tests.support.authserver when it starts it), and a one-second polling interval for tests.
    "OAUTH_DEVICE_VERIFICATION_URI": f"{PUBLIC_URL}/o/device/",
    "OAUTH_DEVICE_VERIFICATION_URI_COMPLETE": f"{PUBLIC_URL}/o/device/?user_code={{user_code}}",
    "DEVICE_FLOW_INTERVAL": 1,
}

# --- OpenID Provider (tests.authserver.openid) ---------------------------------------------------------------
# OpenID Connect on top of OAuth 2.0: ID tokens signed with a key made when the server starts, the issuer
# <url>/o (as its discovery document says), the claims of OpenIdValidator, and RP-initiated logout at /o/logout/.
from tests.authserver.openid_keys import new_rsa_key  # noqa: E402 - this block stays in one piece

OAUTH2_PROVIDER.update(
    {
        "OIDC_ENABLED": True,
        "OIDC_RSA_PRIVATE_KEY": new_rsa_key(),
        "OIDC_ISS_ENDPOINT": f"{PUBLIC_URL}/o",
        "OAUTH2_VALIDATOR_CLASS": "tests.authserver.openid.OpenIdValidator",
        "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
        "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
    }
)
# --- end of the OpenID Provider block -------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
