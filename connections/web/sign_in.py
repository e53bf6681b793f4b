"""Who may sign in with a password: people. A bot account never signs in, whatever password it was given; its bot
keys are how it is known (connections.endpoint.bot_keys)."""

from typing import Any

from django.contrib.auth.backends import ModelBackend

from connections.models import BotAccount


class PeopleSignIn(ModelBackend):
    def user_can_authenticate(self, user: Any) -> bool:
        return super().user_can_authenticate(user) and not BotAccount.objects.filter(user_id=user.pk).exists()
