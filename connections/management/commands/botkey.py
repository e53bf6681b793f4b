from argparse import ArgumentParser

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from connections.endpoint.bot_keys import bot_key_create, bot_key_revoke
from connections.models import BotKey


class Command(BaseCommand):
    help = "Create, list or revoke bot keys. `create` prints the raw key as its last line, this once only."

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Create a key for a user (the bot runner).")
        create.add_argument("--user", required=True, help="Username of the bot runner.")
        create.add_argument("--name", default="", help="What the key is for (default: '<user> key').")
        create.add_argument("--expires-days", type=int, default=None, help="Expire after N days (default: never).")
        listing = actions.add_parser("list", help="List keys (never the secret part).")
        listing.add_argument("--user", default=None)
        revoke = actions.add_parser("revoke", help="Revoke a key by its key id (the part after crk_).")
        revoke.add_argument("key_id")

    def handle(self, *args: object, **options: object) -> None:
        action = options["action"]
        if action == "create":
            self._create(str(options["user"]), str(options["name"] or ""), options["expires_days"])
        elif action == "list":
            self._list(options["user"])
        else:
            self._revoke(str(options["key_id"]))

    def _create(self, username: str, name: str, expires_days: object) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}: create the bot runner first (admin or apply_config).")
        if expires_days is not None and int(str(expires_days)) < 1:
            raise CommandError("--expires-days must be 1 or more.")
        key, raw = bot_key_create(
            user=user, name=name or f"{username} key", expires_days=int(str(expires_days)) if expires_days else None
        )
        expiry = f"expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else "never expires"
        self.stdout.write(f"Created bot key {key.key_id} '{key.name}' for {username} ({expiry}).")
        self.stdout.write("Store it now; it cannot be shown again. The key:")
        self.stdout.write(raw)

    def _list(self, username: object) -> None:
        keys = BotKey.objects.select_related("user")
        if username:
            keys = keys.filter(user__username=username)
        for key in keys:
            state = key.state()
            used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
            self.stdout.write(f"{key.key_id}  {state:8}  {key.user.get_username():20}  last used {used}  {key.name}")

    def _revoke(self, key_id: str) -> None:
        key = BotKey.objects.select_related("user").filter(key_id=key_id.removeprefix("crk_")).first()
        if key is None:
            raise CommandError(f"No bot key with id {key_id!r}.")
        if bot_key_revoke(key=key):
            self.stdout.write(f"Revoked bot key {key.key_id} '{key.name}'.")
        else:
            self.stdout.write(f"Bot key {key.key_id} was already revoked.")
