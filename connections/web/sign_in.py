"""Who may sign in with a password: people, while PASSWORD_SIGN_IN lets them (off: nobody; break-glass:<username>:
that one account, for when the identity provider is down). A bot account never signs in, whatever password it was
given; its bot keys are how it is known (connections.endpoint.bot_keys)."""

from typing import Any

from django.contrib.auth.backends import ModelBackend

from connections.models import BotAccount
from connections.people.accounts import password_sign_in_allowed


class PeopleSignIn(ModelBackend):
    def user_can_authenticate(self, user: Any) -> bool:
        return (
            super().user_can_authenticate(user)
            and password_sign_in_allowed(user.get_username())
            and not BotAccount.objects.filter(user_id=user.pk).exists()
        )
