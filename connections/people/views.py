"""Sign-in with the identity provider (mozilla-django-oidc's views, with the endpoints from its discovery document
and a clear page when a sign-in is refused) and sign-out, which ends the provider's session too where it supports
RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0)."""

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import auth
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render, resolve_url
from django.urls import reverse
from django.views.decorators.http import require_POST
from django.views.generic import View
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from connections.people import identity_provider
from connections.people.backend import id_token_of
from connections.people.identity_provider import SignInRefused

BACKEND = "connections.people.backend.IdentityProviderSignIn"
# The identity provider's own errors (OpenID Connect Core 1.0 section 3.1.2.6), in words.
PROVIDER_ERRORS = {
    "login_required": "Your session at {name} has ended: sign in again.",
    "access_denied": "{name} did not let you sign in to Control Room (access denied).",
    "consent_required": "{name} needs your consent before you can sign in: sign in again.",
    "interaction_required": "{name} needs you to sign in again.",
}
# The other error codes a provider may send back (RFC 6749 section 4.1.2.1, OpenID Connect Core 1.0 section 3.1.2.6):
# only these are named on the page, never whatever text the query carries (anyone can make that link).
KNOWN_ERRORS = {
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "account_selection_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
}


def sign_in_refused_page(request: HttpRequest, reason: str) -> HttpResponse:
    context = {"title": "Sign-in refused", "reason": reason, "provider_name": settings.OIDC_PROVIDER_NAME}
    return render(request, "connections/sign_in_refused.html", context, status=403)


class SignInStart(OIDCAuthenticationRequestView):
    """/oidc/authenticate/: to the identity provider, with state, nonce and PKCE (S256) kept in the session."""

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the endpoint is read when a sign-in starts, not when the URLs load
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("Single sign-on is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = identity_provider.endpoint("authorization_endpoint")
        except SignInRefused as exc:
            return sign_in_refused_page(request, exc.reason)
        return super().get(request)

    def get_extra_params(self, request: HttpRequest) -> dict[str, str]:
        return {"redirect_uri": identity_provider.redirect_uri()}


class SignInCallback(OIDCAuthenticationCallbackView):
    """/oidc/callback/: the redirect URI registered at the identity provider."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("Single sign-on is not configured.")
        if "error" not in request.GET and request.GET.get("state") not in (request.session.get("oidc_states") or {}):
            return sign_in_refused_page(
                request, "This sign-in was not started in this browser, or was already used: start it again."
            )
        return super().get(request)

    def login_failure(self) -> HttpResponse:
        # A refused silent renewal (the account deactivated, a spoilt ID token, ...) ends the session it was renewing.
        if self.request.user.is_authenticated:
            auth.logout(self.request)
        reason = getattr(self.request, "sign_in_refused", "")
        if not reason and (error := self.request.GET.get("error", "")):
            known = "{name} refused the sign-in ({error})." if error in KNOWN_ERRORS else "{name} refused the sign-in."
            reason = PROVIDER_ERRORS.get(error, known).format(name=settings.OIDC_PROVIDER_NAME, error=error)
        return sign_in_refused_page(self.request, reason or "The sign-in did not complete: start it again.")


def sign_in_callback_not_counted(request: HttpRequest, credentials: dict[str, Any] | None = None) -> bool:
    """django-axes' AXES_WHITELIST_CALLABLE: a refused callback is no password guess (it has no username, so axes
    would count it against the address alone and lock out everyone signing in from behind it); its refusals are
    audited and counted by accounts.sign_in_refusal_record."""
    return request.path_info == reverse("oidc_authentication_callback")


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    """Ends the session here, then at the identity provider for someone it signed in, where it has an
    end_session_endpoint (with the ID token as id_token_hint: Okta requires it)."""
    signed_in_by_provider = request.session.get(auth.BACKEND_SESSION_KEY) == BACKEND
    id_token = id_token_of(request)
    auth.logout(request)
    back = resolve_url(settings.LOGOUT_REDIRECT_URL)
    if not (signed_in_by_provider and settings.OIDC_ENABLED):
        return HttpResponseRedirect(back)
    try:
        end_session = identity_provider.endpoint("end_session_endpoint")
    except SignInRefused:
        end_session = ""
    if not end_session:  # Google has none: only this session ends
        return HttpResponseRedirect(back)
    params = {
        "client_id": settings.OIDC_CLIENT_ID,
        "post_logout_redirect_uri": f"{settings.PUBLIC_URL}{reverse('login')}",
    }
    if id_token:
        params["id_token_hint"] = id_token
    return HttpResponseRedirect(f"{end_session}{'&' if '?' in end_session else '?'}{urlencode(params)}")
