"""mozilla-django-oidc's authentication backend, with what Control Room needs of it: the provider's endpoints from
its discovery document, every call under the outbound policy, the ID token fully checked
(connections.people.identity_provider), people matched by `sub` rather than by e-mail, and their roles set from
their groups (connections.people.accounts)."""

import base64
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.http import HttpRequest
from django_cryptography.utils.crypto import FernetBytes, InvalidToken
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from connections.http import client_address
from connections.models import BotAccount
from connections.people import accounts, identity_provider
from connections.people.identity_provider import SignInRefused

# The ID token kept (encrypted, like every token at rest) for RP-initiated logout's id_token_hint.
ID_TOKEN_SESSION_KEY = "people_id_token"  # noqa: S105 - a session key's name


def id_token_of(request: HttpRequest) -> str:
    """The signed-in person's ID token, "" when there is none (or it no longer decrypts)."""
    sealed = request.session.get(ID_TOKEN_SESSION_KEY)
    try:
        return FernetBytes().decrypt(base64.b64decode(sealed)).decode() if sealed else ""
    except (InvalidToken, ValueError):  # another CRYPTOGRAPHY_KEY since: the hint is only a courtesy to the provider
        return ""


class IdentityProviderSignIn(OIDCAuthenticationBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Nothing is read from the provider here: Django makes a backend for every password sign-in and permission
        # check, which must not depend on the identity provider answering.
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_CLIENT_SECRET

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        """Only the callback's call (it gives the nonce) is ours; a refusal is kept on the request for its page."""
        if request is None or not settings.OIDC_ENABLED or "nonce" not in kwargs:
            return None
        try:
            return super().authenticate(request, **kwargs)
        except SignInRefused as exc:
            request.sign_in_refused = exc.reason  # type: ignore[attr-defined]
            accounts.sign_in_refusal_record(reason=exc.reason, remote_addr=client_address(request))
            return None

    def get_user(self, user_id: Any) -> User | None:
        """The session's person while they may still sign in: Django asks at every request, and a person deactivated
        (or made a bot account) since signing in is signed out at once, as the password backend does."""
        user = super().get_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None

    def user_can_authenticate(self, user: Any) -> bool:
        return super().user_can_authenticate(user) and not BotAccount.objects.filter(user_id=user.pk).exists()

    def get_token(self, payload: dict[str, str]) -> dict[str, Any]:
        return identity_provider.code_exchange({**payload, "redirect_uri": identity_provider.redirect_uri()})

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        return identity_provider.id_token_verify(token, nonce=kwargs.get("nonce"))

    def store_tokens(self, access_token: str, id_token: str) -> None:
        self.request.session[ID_TOKEN_SESSION_KEY] = base64.b64encode(FernetBytes().encrypt(id_token.encode())).decode()

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The ID token's claims, with userinfo's added (groups may be sent only there); userinfo never
        overrides the ID token's own claims (iss, aud, sub, ...)."""
        return {**identity_provider.userinfo(access_token, subject=payload["sub"]), **payload}

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        found = accounts.person_find(claims)
        return self.UserModel.objects.filter(pk=found.pk) if found is not None else self.UserModel.objects.none()

    def create_user(self, claims: dict[str, Any]) -> User:
        return self.update_user(accounts.person_create(claims), claims)

    def update_user(self, user: User, claims: dict[str, Any]) -> User:
        if not user.is_active:
            raise SignInRefused("This account is deactivated in Control Room.")
        signed_in = getattr(self.request, "user", None)
        renewal = signed_in is not None and signed_in.is_authenticated and signed_in.pk == user.pk
        return accounts.person_sign_in_apply(user=user, claims=claims, renewal=renewal)
