"""What the sign-in pages show: the "Sign in with <provider>" link, and whether the password form is there."""

from django.conf import settings
from django.http import HttpRequest


def sign_in_options(request: HttpRequest) -> dict[str, str]:
    """A context processor: sign_in_with (the provider's name, "" without single sign-on) and password_sign_in
    (everyone, nobody, or break-glass)."""
    return {
        "sign_in_with": settings.OIDC_PROVIDER_NAME if settings.OIDC_ENABLED else "",
        "password_sign_in": settings.PASSWORD_SIGN_IN_ALLOWS,
    }
