"""The loopback server's side of RFC 7523, which django-oauth-toolkit does not do: client authentication by a
signed assertion (private_key_jwt, section 2.2) in front of DOT's token and revocation views, and the JWT bearer
grant (section 2.1), which this module answers itself with a DOT access token. Every assertion is verified with
the public key registered for its client (PyJWT), must be for this server's token URL, must not have expired,
and its jti is taken once."""

import secrets
from datetime import timedelta

import jwt
from django.contrib.auth import get_user_model
from django.db import IntegrityError
from django.http import HttpRequest, JsonResponse, QueryDict
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model
from oauth2_provider.settings import oauth2_settings

from tests.authserver.models import ClientFlags, UsedAssertion

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ALGORITHMS = ["RS256", "ES256"]


class Refused(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> JsonResponse:
        return JsonResponse({"error": self.error, "error_description": self.description}, status=self.status)


def _verified(request: HttpRequest, assertion: str) -> tuple[ClientFlags, dict]:
    """The client whose registered key signed this assertion, and its claims; Refused otherwise."""
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise Refused("invalid_client", "the assertion is not a JWT", 401) from None
    flags = ClientFlags.objects.filter(client_id=str(issuer)).exclude(public_key="").first()
    if flags is None:
        raise Refused("invalid_client", "no key is registered for the assertion's issuer", 401)
    if flags.key_id and header.get("kid") != flags.key_id:
        raise Refused("invalid_client", f"the assertion's kid is not {flags.key_id}", 401)
    try:
        claims = jwt.decode(
            assertion,
            flags.public_key,
            algorithms=ALGORITHMS,
            audience=request.build_absolute_uri("/o/token/"),
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.InvalidSignatureError:
        raise Refused(
            "invalid_client", "the assertion's signature does not verify with the client's key", 401
        ) from None
    except jwt.PyJWTError as exc:
        raise Refused("invalid_client", f"the assertion is refused: {exc}", 401) from None
    try:
        UsedAssertion.objects.create(jti=str(claims["jti"]))
    except IntegrityError:
        raise Refused("invalid_client", "the assertion's jti was used before", 401) from None
    return flags, claims


def client_assertion_read(request: HttpRequest) -> JsonResponse | None:
    """A request authenticated by a client assertion is turned into what DOT checks (the client's ID and secret),
    once the assertion is verified; an error answer when it is not. None for other requests."""
    if request.POST.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        return None
    try:
        flags, claims = _verified(request, request.POST.get("client_assertion", ""))
        if claims["sub"] != flags.client_id or request.POST.get("client_id", flags.client_id) != flags.client_id:
            raise Refused("invalid_client", "a client assertion's iss and sub are the client ID", 401)
    except Refused as refused:
        return refused.response()
    fields = request.POST.copy()
    for name in ("client_assertion_type", "client_assertion"):
        fields.pop(name)
    fields.update({"client_id": flags.client_id, "client_secret": flags.secret})
    request.POST = QueryDict(fields.urlencode())
    return None


def jwt_bearer_answer(request: HttpRequest) -> JsonResponse:
    """The JWT bearer grant: a token for the assertion's subject (a user of this server, or the client itself)."""
    try:
        flags, claims = _verified(request, request.POST.get("assertion", ""))
        user = None
        if claims["sub"] != flags.client_id:
            user = get_user_model().objects.filter(username=claims["sub"]).first()
            if user is None:
                raise Refused("invalid_grant", f"no user {claims['sub']!r} to act as")
    except Refused as refused:
        return refused.response()
    lifetime = oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS
    scope = str(claims.get("scope") or "read")
    token = get_access_token_model().objects.create(
        user=user,
        application=get_application_model().objects.get(client_id=flags.client_id),
        token=secrets.token_urlsafe(32),
        expires=timezone.now() + timedelta(seconds=lifetime),
        scope=scope,
    )
    return JsonResponse({"access_token": token.token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope})
