"""The bot runner of the token endpoint's tests: a user in a role, with a bot key."""

from dataclasses import dataclass

from django.contrib.auth.models import Group, User

from connections.endpoint.bot_keys import bot_key_create
from connections.models import BotKey, Connection


@dataclass(frozen=True)
class Bot:
    user: User
    role: Group
    key: BotKey
    raw_key: str  # shown once at creation, as the bot runner received it

    def invite(self, connection: Connection) -> None:
        connection.roles.add(self.role)


def make_bot(username: str, role_name: str, key_name: str) -> Bot:
    role = Group.objects.create(name=role_name)
    user = User.objects.create_user(username)
    user.groups.add(role)
    key, raw_key = bot_key_create(user=user, name=key_name)
    return Bot(user=user, role=role, key=key, raw_key=raw_key)
