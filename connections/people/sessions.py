"""How long a session lasts: at most SESSION_MAX_HOURS from sign-in, and, for someone the identity provider signed
in, only while the provider's own session lasts (checked every OIDC_RENEW_SECONDS with a silent prompt=none
sign-in: mozilla-django-oidc's SessionRefresh, with the endpoint from the discovery document)."""

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import auth, messages
from django.contrib.auth.signals import user_logged_in
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from mozilla_django_oidc.middleware import SessionRefresh
from mozilla_django_oidc.utils import import_from_settings

from connections.people import identity_provider
from connections.people.identity_provider import SignInRefused

logger = logging.getLogger(__name__)

SIGNED_IN_AT = "people_signed_in_at"


def _signed_in(sender: Any, request: HttpRequest, **kwargs: Any) -> None:
    # Every sign-in starts the clock again (a silent renewal is no sign-in: mozilla-django-oidc does not log the
    # same person in again).
    request.session[SIGNED_IN_AT] = time.time()


user_logged_in.connect(_signed_in, dispatch_uid="connections.people.sessions")


class SessionLimits:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.renewal = SessionRenewal(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Without a session cookie nobody is signed in: the session is not read (a bot's request, whose answer must
        # not vary by cookie, and which should not pay for a session lookup).
        if settings.SESSION_COOKIE_NAME in request.COOKIES and request.user.is_authenticated:
            started = request.session.get(SIGNED_IN_AT)
            if started is None:
                request.session[SIGNED_IN_AT] = time.time()
            elif settings.SESSION_MAX_HOURS and time.time() - started > settings.SESSION_MAX_HOURS * 3600:
                auth.logout(request)
                messages.info(request, "Your session reached its longest allowed time: sign in again.")
                return redirect_to_login(request.get_full_path())
            if settings.OIDC_ENABLED and (renewing := self.renewal.process_request(request)) is not None:
                return renewing
        return self.get_response(request)


class SessionRenewal(SessionRefresh):
    @staticmethod
    def get_settings(attr: str, *args: Any) -> Any:
        # The provider's endpoint is not a setting here (it is read from the discovery document when needed), and
        # the redirect URI comes from PUBLIC_URL.
        if attr == "OIDC_AUTH_REQUEST_EXTRA_PARAMS":
            return {"redirect_uri": identity_provider.redirect_uri()}
        return import_from_settings(attr, *args) if args or hasattr(settings, attr) else ""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not self.is_refreshable_url(request) or request.session.get("oidc_id_token_expiration", 0) > time.time():
            return None
        # Read now, not when the middleware was made: the settings are read at each request, like the views'.
        self.OIDC_RP_CLIENT_ID, self.OIDC_RP_SCOPES = settings.OIDC_CLIENT_ID, settings.OIDC_SCOPES
        try:
            self.OIDC_OP_AUTHORIZATION_ENDPOINT = identity_provider.endpoint("authorization_endpoint")
        except SignInRefused as exc:  # the provider cannot be asked now: the session lasts until it can be
            logger.warning("Could not renew a session at the identity provider: %s", exc.reason)
            return None
        return super().process_request(request)
