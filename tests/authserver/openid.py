"""The loopback server as an OpenID Provider (django-oauth-toolkit's OIDC support): the claims a company's identity
provider sends (e-mail, name, groups), its metadata, and ID tokens a relying party must refuse (another audience,
another nonce, expired, signed with another key, from another issuer, unsigned or signed with the client secret,
authorized for another party), driven from the tests through /_control/."""

import base64
import json
import time
from typing import Any
from urllib.parse import unquote_plus

import jwt
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from oauth2_provider.models import get_application_model
from oauth2_provider.settings import oauth2_settings

from tests.authserver.models import OpenIdFault
from tests.authserver.oauth import Validator
from tests.authserver.openid_keys import new_rsa_key

ID_TOKEN_FAULTS = ("audience", "nonce", "expired", "signature", "issuer", "algorithm-none", "algorithm-hs256", "azp")


class OpenIdValidator(Validator):
    """Claims as Entra ID sends them: the person's groups by name in the ID token and at userinfo, with no scope of
    their own (Okta and Keycloak need a scope or a mapper for them; docs/sso.md)."""

    oidc_claim_scope = {
        **Validator.oidc_claim_scope,
        "email": "openid",
        "preferred_username": "openid",
        "name": "openid",
        "groups": "openid",
    }

    def validate_silent_login(self, request) -> bool:
        # prompt=none (a relying party renewing a session): DOT's authorization view answers login_required itself
        # to someone not signed in here, so whoever reaches this check is.
        return True

    def validate_silent_authorization(self, request) -> bool:
        return True  # openid_client() makes every relying party consented for everyone

    def get_additional_claims(self, request) -> dict[str, Any]:
        user = request.user
        return {
            "email": user.email,
            "preferred_username": user.get_username(),
            "name": user.get_full_name() or user.get_username(),
            "groups": sorted(user.groups.values_list("name", flat=True)),
        }


def provider_metadata(issuer: str) -> dict[str, Any]:
    """What OpenID Connect Discovery 1.0 adds to the server's metadata."""
    return {
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "userinfo_endpoint": f"{issuer}/userinfo/",
        "end_session_endpoint": f"{issuer}/logout/",
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["openid", "email", "profile", "groups"],
        "claims_supported": ["sub", "email", "preferred_username", "name", "groups"],
    }


def _client_secret(request: HttpRequest) -> str:
    """The secret the client authenticated with at the token endpoint (HTTP Basic or the form, RFC 6749 2.3.1)."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        return unquote_plus(base64.b64decode(credentials).decode().partition(":")[2])
    return request.POST.get("client_secret", "")


def id_token_fault_apply(response: HttpResponse, request: HttpRequest) -> HttpResponse:
    """The token answer, its ID token spoilt as the waiting fault says (the fault is then used up)."""
    if response.status_code != 200 or not OpenIdFault.objects.exists():
        return response
    answer = json.loads(response.content)
    if "id_token" not in answer:
        return response
    with transaction.atomic():
        fault = OpenIdFault.objects.select_for_update().first()
        if fault is None:
            return response
        fault.delete()
    header = jwt.get_unverified_header(answer["id_token"])
    claims = jwt.decode(answer["id_token"], options={"verify_signature": False})
    key, algorithm = oauth2_settings.OIDC_RSA_PRIVATE_KEY, "RS256"
    if fault.mode == "audience":
        claims["aud"] = "another-relying-party"
    elif fault.mode == "nonce":
        claims["nonce"] = "not-the-nonce-asked-for"
    elif fault.mode == "expired":
        claims["iat"], claims["exp"] = int(time.time()) - 7200, int(time.time()) - 3600
    elif fault.mode == "signature":
        key = new_rsa_key()  # the same kid: only the signature gives it away
    elif fault.mode == "azp":
        claims["azp"] = "another-relying-party"  # the audience is still this one
    elif fault.mode == "issuer":
        claims["iss"] = "https://another-issuer.example"
    elif fault.mode == "algorithm-none":
        key, algorithm = None, "none"  # unsigned: anyone could have written it
    elif fault.mode == "algorithm-hs256":
        key, algorithm = _client_secret(request), "HS256"  # a secret the relying party holds, not the provider's key
    answer["id_token"] = jwt.encode(claims, key, algorithm=algorithm, headers={"kid": header.get("kid")})
    response.content = json.dumps(answer).encode()
    return response


def id_token_fault(body: dict) -> dict:
    mode = str(body.get("mode") or "")
    if mode not in ID_TOKEN_FAULTS:
        raise ValueError(f"mode: one of {', '.join(ID_TOKEN_FAULTS)}")
    OpenIdFault.objects.all().delete()
    OpenIdFault.objects.create(mode=mode)
    return {"mode": mode}


def openid_client(body: dict) -> dict:
    """An existing client made a relying party: ID tokens signed with RS256, no consent page (a company's
    applications are consented for everyone, so a silent renewal with prompt=none can succeed), and where
    RP-initiated logout may send people back to."""
    updated = get_application_model().objects.filter(client_id=str(body["client_id"]))
    back = " ".join(str(uri) for uri in body.get("post_logout_redirect_uris") or [])
    if not updated.update(algorithm="RS256", skip_authorization=True, post_logout_redirect_uris=back):
        raise KeyError("no such client")
    return {"client_id": body["client_id"]}


def user_groups(body: dict) -> dict:
    """A person's e-mail and groups at the identity provider (groups made as needed)."""
    user = get_user_model().objects.filter(username=str(body["username"])).first()
    if user is None:
        raise KeyError("no such user: create it first")
    if "email" in body:
        user.email = str(body["email"] or "")
        user.save(update_fields=["email"])
    user.groups.set([Group.objects.get_or_create(name=str(name))[0] for name in body.get("groups") or []])
    return {"username": user.get_username(), "groups": sorted(user.groups.values_list("name", flat=True))}
