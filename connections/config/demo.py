"""`make demo` (manage.py demo_provider): a provider to try Control Room with, on this machine, and the connections
that match it, so that the README's "Try it without a real provider" reaches a bot's first token in five steps.

The connections, the role and the bot account are written as a configuration file would write them
(connections.config.apply: the same checks, the same audit events), so running it again changes nothing but what
moved (the provider's port)."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml
from django.conf import settings
from django.contrib.auth.models import User

from connections.config.apply import config_apply, config_plan
from connections.config.demo_provider import (
    AUTHORIZATION_CODE_CLIENT,
    CLIENT_CREDENTIALS_CLIENT,
    DEMO_PASSWORD,
    DEMO_USER,
    DemoProvider,
)
from connections.endpoint.bot_keys import bot_account_create
from connections.errors import ConfigError, ConnectionActionError, DemoProviderError
from connections.models import Connection
from connections.services import connection_test

BOT_ACCOUNT = "demo-bot"
ROLE = "Demo bots"
CLIENT_CREDENTIALS = "Demo client credentials"
AUTHORIZATION_CODE = "Demo authorization code"


@dataclass(frozen=True)
class DemoSetup:
    client_credentials: Connection
    authorization_code: Connection
    client_credentials_outcome: str  # the Save and test sentence


def demo_provider_start(*, port: int, folder: Path | None = None) -> DemoProvider:
    """Start the demo provider on 127.0.0.1; development only."""
    if not settings.DEBUG:
        raise DemoProviderError(
            "The demo provider is for development only, and DEBUG is off: it serves plain http on loopback, which "
            "Control Room refuses to call in production. Run it on a development checkout (make run writes "
            "DEBUG=true into .env)."
        )
    if importlib.util.find_spec("oauth2_provider") is None:
        raise DemoProviderError(
            "The demo provider is django-oauth-toolkit, a test requirement: make demo installs it (or "
            "pip install -r requirements-test.lock)."
        )
    provider = DemoProvider(folder=folder or settings.VAR_DIR / "demo-provider", port=port)
    provider.start()
    return provider


def demo_connections_set_up(*, provider: DemoProvider) -> DemoSetup:
    """The provider's applications and user, and in Control Room the two matching connections, the bot account
    demo-bot and the role Demo bots invited to both; the client-credentials connection tested (so connected)."""
    administrator = User.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if administrator is None:
        raise DemoProviderError(
            "No administrator yet: start Control Room with make run first (it creates one), then make demo again."
        )
    client_secrets = provider.register(redirect_uri=settings.OAUTH_REDIRECT_URI)
    for client, secret in client_secrets.items():
        secret_file = provider.folder / f"{client}.secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
    if not User.objects.filter(username=BOT_ACCOUNT).exists():
        bot_account_create(username=BOT_ACCOUNT, created_by=administrator)
    try:
        config_apply(config_plan(yaml.safe_dump(_document(provider)), base_dir=provider.folder), actor=administrator)
    except ConfigError as exc:  # e.g. a connection of another kind already holds one of the demo's names
        raise DemoProviderError("The demo connections could not be written:\n" + "\n".join(exc.problems)) from None
    client_credentials = Connection.objects.get(slug=CLIENT_CREDENTIALS_CLIENT)
    try:
        outcome = connection_test(connection=client_credentials, actor=administrator)
    except ConnectionActionError as exc:
        outcome = exc.message
    return DemoSetup(
        client_credentials=client_credentials,
        authorization_code=Connection.objects.get(slug=AUTHORIZATION_CODE_CLIENT),
        client_credentials_outcome=outcome,
    )


def _document(provider: DemoProvider) -> dict:
    where = f"make demo's provider at {provider.url}"
    common = {"provider": "custom", "token_type": "shared", "token_url": provider.token_url}
    return {
        "connections": [
            {
                **common,
                "name": CLIENT_CREDENTIALS,
                "slug": CLIENT_CREDENTIALS_CLIENT,
                "description": f"{where}: the application acts as itself, no person signs in.",
                "grant_type": "client_credentials",
                "client_id": CLIENT_CREDENTIALS_CLIENT,
                "client_secret_file": f"{CLIENT_CREDENTIALS_CLIENT}.secret",
                "revocation_url": provider.revocation_url,
                "scopes": "read",
            },
            {
                **common,
                "name": AUTHORIZATION_CODE,
                "slug": AUTHORIZATION_CODE_CLIENT,
                "description": f"{where}: a person signs in there ({DEMO_USER}) and consents.",
                "grant_type": "authorization_code_pkce",
                "client_id": AUTHORIZATION_CODE_CLIENT,
                "client_secret_file": f"{AUTHORIZATION_CODE_CLIENT}.secret",
                "authorization_url": provider.authorization_url,
                "revocation_url": provider.revocation_url,
                "scopes": "read,write",
            },
        ],
        "roles": [
            {
                "name": ROLE,
                "permissions": [],
                "users": [BOT_ACCOUNT],
                "connections": [CLIENT_CREDENTIALS_CLIENT, AUTHORIZATION_CODE_CLIENT],
            }
        ],
    }


def demo_instructions(*, provider: DemoProvider, setup: DemoSetup) -> str:
    """What to click next, with this site's addresses (PUBLIC_URL)."""
    site = settings.PUBLIC_URL
    page = f"{site}/admin/connections/connection/{setup.authorization_code.pk}/change/"
    return "\n".join(
        [
            f"The demo provider runs at {provider.url} (its log: {provider.log_path}). Ctrl-C stops it.",
            f'In Control Room ({site}/admin/), as the README\'s "Try it without a real provider" says:',
            f"  - {CLIENT_CREDENTIALS}: {setup.client_credentials_outcome}",
            f"  - {AUTHORIZATION_CODE}: open {page}",
            f"    click Connect, sign in at the demo provider as {DEMO_USER} with the password {DEMO_PASSWORD},",
            "    and click Authorize.",
            f"  - Bot keys: {site}/admin/connections/botkey/add/ for the user {BOT_ACCOUNT} (role {ROLE}, invited to",
            "    both connections). The page shows the key once, with a curl line that gets the first token.",
        ]
    )
