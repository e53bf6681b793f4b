"""A sketch of a cheaper token endpoint, to measure what the changes proposed for it would buy. Not app code.

Served only by bench.settings (bench/urls.py) and measured by `bench/token_endpoint.py --prototype`.
The common case (an active key, an invited and enabled connection, a stored token valid for min_validity)
is answered with:
- one SELECT for key, user, connection, invitation and token together, in raw SQL (no ORM compiling, no
  Connection/Provider model instances);
- one Redis round trip for the rate limit (INCR and EXPIRE pipelined) on a client made once per process,
  where Django's cache makes a new redis.Redis (and its 170 response callbacks) for each of its two calls;
- the audit row as a plain INSERT, or none at all on the `-no-audit` URL (failures would still be audited).
Anything else (no token, expiring token, refresh failing, any error) goes to the real view unchanged.
"""

import hashlib
import hmac
import json
import math
import time
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from connections import views
from connections.models import OAuthToken

FAST_PATH_SQL = """
SELECT k.key_id, k.digest, k.revoked_at, k.expires_at, k.last_used_at, u.id, u.username, u.is_active,
       c.id, c.slug, c.is_enabled,
       EXISTS (SELECT 1 FROM connections_connection_roles r JOIN auth_user_groups g ON g.group_id = r.group_id
               WHERE r.connection_id = c.id AND g.user_id = u.id),
       t.access_token, t.token_type, t.scope, t.extra, t.expires_at, t.state
FROM connections_botkey k
JOIN auth_user u ON u.id = k.user_id
JOIN connections_connection c ON c.slug = %s
JOIN connections_oauthtoken t ON t.connection_id = c.id
     AND t.user_id IS NOT DISTINCT FROM (CASE WHEN c.token_type = 'user_specific' THEN u.id END)
WHERE k.key_id = %s
"""
AUDIT_SQL = """
INSERT INTO connections_auditevent
    (created_at, actor_id, actor_label, connection_id, connection_label, action, outcome, detail, remote_addr)
VALUES (%s, %s, %s, %s, %s, 'token_request', 'success', %s, %s)
"""
_redis: redis.Redis | None = None


def _rate_limited(key_id: str) -> bool:
    global _redis
    limit = settings.TOKEN_RATE_LIMIT_PER_MINUTE
    if not limit:
        return False
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL)
    counter = cache.make_key(f"token-rate:{key_id}:{int(time.time() // 60)}")
    count, _ = _redis.pipeline(transaction=False).incr(counter).expire(counter, 120, nx=True).execute()
    return count > limit


def _token(request: HttpRequest, slug: str, *, audit: bool) -> HttpResponse:
    scheme, _, raw_key = request.headers.get("Authorization", "").partition(" ")
    key_id, _, secret = raw_key.strip().removeprefix("crk_").partition("_")
    if scheme.lower() != "bearer" or not secret or request.GET:
        return views.connection_token(request, slug)
    with connection.cursor() as cursor:
        cursor.execute(FAST_PATH_SQL, [slug, key_id])
        row = cursor.fetchone()
    if row is None:
        return views.connection_token(request, slug)
    (key_id, digest, revoked_at, key_expires_at, last_used_at, user_pk, username, user_active) = row[:8]
    (connection_pk, slug, enabled, invited, access_token, token_type, scope, extra, expires_at, state) = row[8:]
    now = datetime.now(UTC)
    usable = (
        hmac.compare_digest(digest, hashlib.sha256(secret.encode()).hexdigest())
        and revoked_at is None
        and (key_expires_at is None or key_expires_at > now)
        and user_active
        and invited
        and enabled
        and state == "active"
        and (expires_at is None or (expires_at - now).total_seconds() > 60)  # the default min_validity
    )
    if not usable or _rate_limited(key_id) or last_used_at is None or now - last_used_at > timedelta(seconds=60):
        return views.connection_token(request, slug)  # refusals, refreshes and last-used writes: the real view
    plain_token = OAuthToken._meta.get_field("access_token").from_db_value(access_token, None, connection)
    if audit:
        detail = f"Token expiring {expires_at:%Y-%m-%d %H:%M:%S}" if expires_at else ""
        with connection.cursor() as cursor:
            label = f"{username} (key {key_id})"
            cursor.execute(
                AUDIT_SQL, [now, user_pk, label, connection_pk, slug, detail, request.META.get("REMOTE_ADDR")]
            )
    response = JsonResponse(
        {
            "connection": slug,
            "access_token": plain_token,
            "token_type": token_type or "Bearer",
            "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if expires_at else None,
            "expires_in": None if expires_at is None else max(0, math.floor((expires_at - now).total_seconds())),
            "scope": scope,
            "extra": json.loads(extra) if isinstance(extra, str) else extra,
        }
    )
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


@require_GET
def token_prototype(request: HttpRequest, slug: str) -> HttpResponse:
    return _token(request, slug, audit=True)


@require_GET
def token_prototype_no_audit(request: HttpRequest, slug: str) -> HttpResponse:
    return _token(request, slug, audit=False)
