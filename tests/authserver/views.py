"""Views of the test auth server: the token endpoint wrapper (faults, options, counters),
the protected resource /api/me, and the /_control/ API the tests drive it with."""

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import get_access_token_model, get_application_model, get_refresh_token_model
from oauth2_provider.views import DeviceAuthorizationView as DotDeviceAuthorizationView
from oauth2_provider.views import (
    IntrospectTokenView,
    ProtectedResourceView,
    RevokeTokenView,
    TokenView,
)

from tests.authserver import holds, openid
from tests.authserver.assertions import JWT_BEARER_GRANT, client_assertion_read, jwt_bearer_answer
from tests.authserver.models import ClientFlags, ServerState, UsedAssertion, UsedRefreshToken

FAULT_MODES = {
    "none",
    "status_500",
    "html",
    "timeout",
    "close",
    "status_429",
    "invalid_grant",
    "not_json_200",
    "no_access_token",
    "slow_down",  # a device token request answered slow_down (RFC 8628 3.5)
    "expired_token",  # a device token request answered expired_token
    "drip",  # the real answer, a few bytes at a time, fault_delay seconds apart (each read is quick)
    "huge",  # 200 with a 20 MB JSON body
}
GRANT_COUNTERS = {
    "authorization_code": "token_authorization_code",
    "refresh_token": "token_refresh_token",
    "client_credentials": "token_client_credentials",
    JWT_BEARER_GRANT: "token_jwt_bearer",
    "urn:ietf:params:oauth:grant-type:device_code": "token_device_code",
}

_dot_token = TokenView.as_view()
_dot_revoke = RevokeTokenView.as_view()
_dot_introspect = IntrospectTokenView.as_view()


# --- OAuth endpoints -------------------------------------------------------------------------


def _take_fault(state: ServerState, grant_type: str) -> str | None:
    """Return the fault mode to apply to this token request, consuming one use of it."""
    mode = state.fault_mode
    if mode == "none":
        return None
    if state.fault_grant_types is not None and grant_type not in state.fault_grant_types:
        return None
    if state.fault_remaining is None:
        return mode
    # Conditional UPDATE: of concurrent requests only `count` ones win a use of the fault.
    won = ServerState.objects.filter(pk=1, fault_mode=mode, fault_remaining__gt=0).update(
        fault_remaining=F("fault_remaining") - 1
    )
    return mode if won else None


def _fault_response(mode: str, request: HttpRequest) -> HttpResponse:
    if mode == "status_500":
        return HttpResponse("Internal Server Error", status=500, content_type="text/plain")
    if mode == "html":
        body = "<!DOCTYPE html><html><body><h1>Maintenance</h1><p>Back soon.</p></body></html>"
        return HttpResponse(body, status=200, content_type="text/html; charset=utf-8")
    if mode == "status_429":
        response = JsonResponse(
            {"error": "rate_limited", "error_description": "Too many requests"},
            status=429,
        )
        response["Retry-After"] = "1"
        return response
    if mode == "invalid_grant":
        description = ServerState.get().fault_description or "Injected fault: grant is invalid"
        return JsonResponse({"error": "invalid_grant", "error_description": description}, status=400)
    if mode == "huge":
        padding = "x" * (20 * 1024 * 1024)
        return HttpResponse(f'{{"access_token": "huge", "pad": "{padding}"}}', content_type="application/json")
    if mode == "not_json_200":
        return HttpResponse("this is not json {{{", status=200, content_type="text/plain")
    if mode in ("slow_down", "expired_token"):
        return JsonResponse({"error": mode, "error_description": "Injected fault"}, status=400)
    if mode == "no_access_token":
        return JsonResponse({"token_type": "Bearer", "expires_in": 3600})
    if mode == "close":
        sock = request.environ.get("gunicorn.socket")
        if sock is None:
            return HttpResponse("close fault needs gunicorn", status=500, content_type="text/plain")
        # Shut the TCP connection down now: the client gets FIN before any response byte.
        # gunicorn's write of the dummy response below then fails with EPIPE, which it
        # ignores, and it closes the fd itself (closing it here could hit a reused fd).
        sock.shutdown(socket.SHUT_RDWR)
        return HttpResponse(status=204)
    raise ValueError(mode)


def _is_reuse(request: HttpRequest) -> bool:
    """A refresh token presented again after the server accepted it once (a client must never do that; one that
    was revoked instead is not counted: revoking is no use)."""
    return UsedRefreshToken.objects.filter(token=request.POST.get("refresh_token", "")).exists()


def _drip(content: bytes, delay: float):
    for start in range(0, len(content), 16):
        yield content[start : start + 16]
        time.sleep(delay)


@csrf_exempt
def token(request: HttpRequest, at_refresh_url: bool = False) -> HttpResponse:
    """DOT's TokenView, wrapped with counters, latency, holds (tests.authserver.holds), injected faults and
    response options."""
    response = _token_answer(request, at_refresh_url)
    holds.hold_here("answer", request.POST.get("grant_type", ""))
    return response


def _token_answer(request: HttpRequest, at_refresh_url: bool) -> HttpResponse:
    state = ServerState.get()
    if refused := _refused_request(request, state, at_refresh_url):
        return refused
    grant_type = request.POST.get("grant_type", "")
    ServerState.bump(GRANT_COUNTERS.get(grant_type, "token_other"))
    if grant_type == "refresh_token" and _is_reuse(request):
        ServerState.bump("refresh_token_reuses")
    holds.hold_here("arrival", grant_type)
    if state.latency > 0:
        time.sleep(state.latency)
    missing = [name for name, value in state.require_params.items() if request.POST.get(name) != value]
    missing += [name for name, value in state.require_headers.items() if request.headers.get(name) != value]
    if missing:
        return JsonResponse({"error": "invalid_request", "error_description": f"missing {missing}"}, status=400)
    mode = _take_fault(state, grant_type)
    if mode == "timeout":
        time.sleep(state.fault_delay)
    elif mode is not None and mode != "drip":
        return _answer_later(state, grant_type, _fault_response(mode, request))
    if grant_type == JWT_BEARER_GRANT:
        return jwt_bearer_answer(request)
    response = _answer_later(state, grant_type, _dot_answer(request, state, grant_type))
    response = openid.id_token_fault_apply(response, request)
    presented = request.POST.get("refresh_token", "")
    if grant_type == "refresh_token" and json.loads(response.content).get("refresh_token", presented) != presented:
        UsedRefreshToken.objects.get_or_create(token=presented)  # rotated: the presented one is used up
    if state.nest_under and response.status_code == 200:
        response.content = json.dumps({"ok": True, state.nest_under: json.loads(response.content)}).encode()
    if mode == "drip":
        dripping = StreamingHttpResponse(_drip(response.content, state.fault_delay), status=response.status_code)
        dripping["Content-Type"] = response["Content-Type"]
        return dripping
    return response


def _json_read(request: HttpRequest, state: ServerState) -> HttpResponse | None:
    """When this server takes JSON requests: the request's JSON object read into request.POST for DOT, or an
    error when it is a form."""
    if not state.json_body:
        return None
    try:
        fields = json.loads(request.body) if request.content_type == "application/json" else None
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        return JsonResponse({"error": "invalid_request", "error_description": "send a JSON object"}, status=400)
    request.POST = QueryDict(urlencode({name: str(value) for name, value in fields.items()}))
    return None


def _refused_request(request: HttpRequest, state: ServerState, at_refresh_url: bool) -> HttpResponse | None:
    """A token request in a shape this server is told not to take: a form where it wants JSON, a refresh at the
    token URL when refreshes have a URL of their own (or anything else at that URL), or the client authentication
    method it does not accept."""
    if refused := _json_read(request, state) or client_assertion_read(request):
        return refused
    is_refresh = request.POST.get("grant_type") == "refresh_token"
    if (state.refresh_elsewhere and is_refresh) != at_refresh_url:
        description = "refresh at /o/refresh/" if is_refresh else "only refreshes are taken here"
        return JsonResponse({"error": "unsupported_grant_type", "error_description": description}, status=400)
    uses_basic = request.headers.get("Authorization", "").startswith("Basic ")
    if state.client_auth and uses_basic != (state.client_auth == "basic"):
        description = f"this server authenticates clients by client_secret_{state.client_auth} only"
        return JsonResponse({"error": "invalid_client", "error_description": description}, status=401)
    return None


def _answer_later(state: ServerState, grant_type: str, response: HttpResponse) -> HttpResponse:
    # A refresh processed already (its refresh token rotated), answered only now: the client may be gone meanwhile.
    if state.response_delay > 0 and grant_type == "refresh_token":
        time.sleep(state.response_delay)
    return response


def _dot_answer(request: HttpRequest, state: ServerState, grant_type: str) -> HttpResponse:
    response = _dot_token(request)
    if response.status_code != 200:
        return response
    data = json.loads(response.content)
    if "access_token" in data:
        data.update(state.token_extra or {})
        if state.omit_expires_in:
            data.pop("expires_in", None)
        if grant_type == "refresh_token" and state.omit_refresh_token_on_refresh:
            # Not rotated (see Validator.rotate_refresh_token) and left out, like Google.
            data.pop("refresh_token", None)
    response.content = json.dumps(data).encode()
    return response


@csrf_exempt
def revoke(request: HttpRequest) -> HttpResponse:
    ServerState.bump("revocations")
    state = ServerState.get()
    if refused := _json_read(request, state) or client_assertion_read(request):
        return refused
    checksum = hashlib.sha256(request.POST.get("token", "").encode()).hexdigest()
    grant = _grant_of(checksum) if state.revoke_whole_grant else None
    response = _dot_revoke(request)
    # DOT revoked it only for the client it was issued to (RFC 7009 2.1): then the rest of the grant goes with it.
    if grant is not None and response.status_code == 200 and _grant_of(checksum) is None:
        _whole_grant_revoke(*grant)
    return response


def _grant_of(checksum: str) -> tuple[int, int] | None:
    """(user, client) of the live refresh or access token with this checksum, None if there is none."""
    for tokens in (get_refresh_token_model().objects.filter(revoked__isnull=True), get_access_token_model().objects):
        found = tokens.filter(token_checksum=checksum, user__isnull=False).values_list("user_id", "application_id")
        if owner := found.first():
            return owner
    return None


def _whole_grant_revoke(user_id: int, application_id: int) -> None:
    """Every refresh and access token of this person for this client, however they were issued."""
    owner = {"user_id": user_id, "application_id": application_id}
    for refresh_token in get_refresh_token_model().objects.filter(**owner, revoked__isnull=True):
        refresh_token.revoke()
    get_access_token_model().objects.filter(**owner).delete()


@csrf_exempt
def introspect(request: HttpRequest) -> HttpResponse:
    ServerState.bump("introspections")
    return _dot_introspect(request)


class DeviceAuthorizationView(DotDeviceAuthorizationView):
    """DOT's device authorization endpoint. oauthlib 4 puts the scope in the answer, which DOT 3.4's
    DeviceCodeResponse does not take (TypeError, HTTP 500); RFC 8628 3.2 defines no scope there, so it is left out."""

    def create_device_authorization_response(self, request: HttpRequest):
        headers, response, status = super().create_device_authorization_response(request)
        if isinstance(response, dict):
            response.pop("scope", None)
        return headers, response, status


class MeView(ProtectedResourceView):
    """GET /api/me: who the bearer token belongs to (empty username for client credentials)."""

    def verify_request(self, request: HttpRequest):
        valid, oauthlib_request = super().verify_request(request)
        # DOT puts the AccessToken on the oauthlib request only; keep it for get().
        self.access_token = getattr(oauthlib_request, "access_token", None)
        return valid, oauthlib_request

    def get(self, request: HttpRequest) -> JsonResponse:
        token = self.access_token
        user = token.user
        return JsonResponse({"username": user.get_username() if user else "", "scope": token.scope})

    def unauthenticated_response(self, request: HttpRequest, oauthlib_request: Any = None):
        # RFC 6750 answer, like real provider APIs (DOT's default is a bare 403).
        response = JsonResponse({"error": "invalid_token"}, status=401)
        response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response


def discovery(request: HttpRequest, kind: str = "openid") -> HttpResponse:
    """This server's metadata (RFC 8414's fields; issuer <url>/o), at OpenID Connect Discovery 1.0's address
    (kind "openid") and at RFC 8414's (kind "oauth")."""
    changes = ServerState.get().discovery
    if changes.get("missing") or (kind == "openid" and changes.get("openid_missing")):
        return JsonResponse({"detail": "Not found."}, status=404)
    issuer = request.build_absolute_uri("/o")
    document = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize/",
        "token_endpoint": f"{issuer}/token/",
        "revocation_endpoint": f"{issuer}/revoke_token/",
        "introspection_endpoint": f"{issuer}/introspect/",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        **openid.provider_metadata(issuer),
    }
    return JsonResponse({**document, **changes.get("document", {})})


# --- Control API -----------------------------------------------------------------------------


class BadRequest(Exception):
    pass


def control(method: str) -> Callable:
    """Control endpoint: checks X-Control-Key, parses the JSON body, answers JSON."""

    def decorate(view: Callable[[dict], Any]) -> Callable:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest) -> HttpResponse:
            key = request.headers.get("X-Control-Key", "")
            if not settings.CONTROL_KEY or not hmac.compare_digest(key, settings.CONTROL_KEY):
                return JsonResponse({"error": "bad or missing X-Control-Key"}, status=403)
            if request.method != method:
                return JsonResponse({"error": f"use {method}"}, status=405)
            try:
                body = json.loads(request.body or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("body must be a JSON object")
                return JsonResponse(view(body))
            except (BadRequest, ValueError, KeyError, TypeError) as exc:
                return JsonResponse({"error": f"{type(exc).__name__}: {exc}"}, status=400)

        return wrapper

    return decorate


@control("GET")
def health(body: dict) -> dict:
    ServerState.get()  # fails (500) until the DB is migrated
    return {"ok": True}


@control("POST")
def clients(body: dict) -> dict:
    Application = get_application_model()
    grant_type = body.get("grant_type", Application.GRANT_AUTHORIZATION_CODE)
    grant_type = {"device-code": Application.GRANT_DEVICE_CODE}.get(grant_type, grant_type)
    if grant_type not in (
        Application.GRANT_AUTHORIZATION_CODE,
        Application.GRANT_CLIENT_CREDENTIALS,
        Application.GRANT_DEVICE_CODE,
    ):
        raise BadRequest(f"unsupported grant_type {grant_type!r}")
    client_id = str(body["client_id"])
    with transaction.atomic():
        # Replace: deleting the app also drops its grants and tokens.
        Application.objects.filter(client_id=client_id).delete()
        Application.objects.create(
            client_id=client_id,
            # Plaintext in: DOT hashes it on save and checks it on every token request.
            client_secret=str(body["client_secret"]),
            name=str(body.get("name") or client_id),
            redirect_uris=" ".join(body.get("redirect_uris") or []),
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=grant_type,
            # Any client asking for the openid scope gets an ID token, as from a real OpenID Provider (without an
            # algorithm DOT fails such a request with a server error).
            algorithm="RS256",
        )
        ClientFlags.objects.update_or_create(
            client_id=client_id,
            defaults={
                "pkce_required": bool(body.get("pkce_required")),
                "public_key": str(body.get("public_key") or ""),
                "key_id": str(body.get("key_id") or ""),
                "secret": str(body["client_secret"]),
            },
        )
    return {"client_id": client_id}


@control("POST")
def users(body: dict) -> dict:
    user, _ = get_user_model().objects.get_or_create(username=str(body["username"]))
    user.set_password(str(body["password"]))
    user.save()
    return {"username": user.get_username()}


@control("POST")
def fault(body: dict) -> dict:
    mode = body.get("mode", "none")
    if mode not in FAULT_MODES:
        raise BadRequest(f"unknown fault mode {mode!r}")
    count = body.get("count")
    grant_types = body.get("grant_types")
    ServerState.objects.filter(pk=1).update(
        fault_mode=mode,
        fault_remaining=None if count is None else int(count),
        fault_delay=float(body.get("delay") or 0),
        fault_grant_types=None if grant_types is None else [str(g) for g in grant_types],
        fault_description=str(body.get("description") or ""),
    )
    return {"mode": mode}


@control("POST")
def token_extra(body: dict) -> dict:
    fields = body.get("fields") or {}
    if not isinstance(fields, dict):
        raise BadRequest("fields must be an object")
    ServerState.objects.filter(pk=1).update(token_extra=fields)
    return {"fields": fields}


@control("POST")
def token_options(body: dict) -> dict:
    changes: dict[str, Any] = {}
    for name in (
        "omit_expires_in",
        "omit_refresh_token_on_refresh",
        "json_body",
        "refresh_elsewhere",
        "revoke_whole_grant",
    ):
        if name in body:
            changes[name] = bool(body[name])
    if "client_auth" in body:
        if body["client_auth"] not in ("", "basic", "post"):
            raise BadRequest("client_auth: basic, post, or empty for both")
        changes["client_auth"] = body["client_auth"]
    for name in ("latency", "response_delay"):
        if name in body:
            changes[name] = float(body[name] or 0)
    if "nest_under" in body:
        changes["nest_under"] = str(body["nest_under"] or "")
    for name in ("require_params", "require_headers"):
        if name in body:
            changes[name] = {str(key): str(value) for key, value in dict(body[name] or {}).items()}
    known = {"omit_expires_in", "omit_refresh_token_on_refresh", "latency", "response_delay", "nest_under"}
    known |= {"client_auth", "json_body", "refresh_elsewhere", "revoke_whole_grant"}
    unknown = set(body) - known - {"require_params", "require_headers"}
    if unknown:
        raise BadRequest(f"unknown options {sorted(unknown)}")
    if changes:
        ServerState.objects.filter(pk=1).update(**changes)
    return changes


@control("POST")
def discovery_document(body: dict) -> dict:
    if set(body) - {"missing", "openid_missing", "document"} or not isinstance(body.get("document", {}), dict):
        raise BadRequest("give missing / openid_missing (true/false) and/or document (fields to replace)")
    ServerState.objects.filter(pk=1).update(discovery=body)
    return body


@control("GET")
def stats(body: dict) -> dict:
    s = ServerState.get()
    return {
        "token_requests": {
            "authorization_code": s.token_authorization_code,
            "refresh_token": s.token_refresh_token,
            "client_credentials": s.token_client_credentials,
            "jwt_bearer": s.token_jwt_bearer,
            "device_code": s.token_device_code,
            "other": s.token_other,
        },
        "revocations": s.revocations,
        "introspections": s.introspections,
        "refresh_token_reuses": s.refresh_token_reuses,
    }


@control("POST")
def grants(body: dict) -> dict:
    """The tokens of a client the server would still accept: what a client that lost track of one leaves behind."""
    client = {"application__client_id": str(body["client_id"])}
    live_access = get_access_token_model().objects.filter(**client, expires__gt=timezone.now())
    return {
        "refresh_tokens": get_refresh_token_model().objects.filter(**client, revoked__isnull=True).count(),
        "access_tokens": live_access.count(),
    }


@control("POST")
def reset(body: dict) -> dict:
    holds.hold_release()
    ServerState.reset()
    UsedRefreshToken.objects.all().delete()
    UsedAssertion.objects.all().delete()
    return {"ok": True}


# --- OpenID Provider (tests.authserver.openid) ---------------------------------------------------------------

openid_id_token_fault = control("POST")(openid.id_token_fault)
openid_client = control("POST")(openid.openid_client)
openid_user_groups = control("POST")(openid.user_groups)


@control("POST")
def client_secret(body: dict) -> dict:
    """The client's secret changed at the provider, as an administrator rotates it there: its grants and tokens
    stay (unlike replacing the client), and only the new secret authenticates it from now on."""
    client_id = str(body["client_id"])
    with transaction.atomic():
        application = get_application_model().objects.select_for_update().get(client_id=client_id)
        application.client_secret = str(body["client_secret"])  # plaintext in: DOT hashes it on save
        application.save(update_fields=["client_secret"])
        ClientFlags.objects.filter(client_id=client_id).update(secret=str(body["client_secret"]))
    return {"client_id": client_id}
