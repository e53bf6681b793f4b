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


# --- cached variant: no SQL on a hit; one Redis round trip (Lua) checks the generation, counts, queues audit.
FAST_LUA = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return -1 end
local count = tonumber(redis.call('GET', KEYS[2]) or '0')
if count >= tonumber(ARGV[2]) then return -2 end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 120, 'NX')
return redis.call('RPUSH', KEYS[3], ARGV[3])
"""
_grants: dict = {}
_script = None


_conn = None


def _run_script(keys, args):
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(settings.REDIS_URL).connection_pool.make_connection()
        _conn.send_command("SCRIPT", "LOAD", FAST_LUA)
        _conn.read_response()
    _conn.send_command("EVALSHA", _sha, len(keys), *keys, *args)
    return _conn.read_response()


_sha = hashlib.sha1(FAST_LUA.encode()).hexdigest()


def _cached(request: HttpRequest, slug: str) -> HttpResponse:
    raw = request.META.get("HTTP_AUTHORIZATION", "")
    if not raw.startswith("Bearer crk_") or request.GET:
        return views.connection_token(request, slug)
    key_id, _, secret = raw[11:].partition("_")
    grant = _grants.get((key_id, slug))
    if grant is None:
        _run_script([], [])  if False else None
        r = redis.Redis.from_url(settings.REDIS_URL)
        generation = r.get("grant-gen") or b"0"
        with connection.cursor() as cursor:
            cursor.execute(FAST_PATH_SQL, [slug, key_id])
            row = cursor.fetchone()
        plain = OAuthToken._meta.get_field("access_token").from_db_value(row[12], None, connection)
        (key_id_, digest, revoked_at, key_expires_at, last_used_at, user_pk, username, user_active) = row[:8]
        (connection_pk, slug_, enabled, invited, access_token, token_type, scope, extra, expires_at, state) = row[8:]
        body_prefix = json.dumps({"connection": slug, "access_token": plain, "token_type": token_type or "Bearer",
            "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if expires_at else None})[:-1]
        body_suffix = json.dumps({"scope": scope, "extra": json.loads(extra) if isinstance(extra, str) else extra})[1:]
        grant = _grants[(key_id, slug)] = (generation.decode(), digest, expires_at.timestamp(), body_prefix, body_suffix, user_pk, connection_pk)
    generation, digest, expires_ts, body_prefix, body_suffix, user_pk, connection_pk = grant
    now = time.time()
    if not hmac.compare_digest(digest, hashlib.sha256(secret.encode()).hexdigest()) or expires_ts - now <= 60:
        return views.connection_token(request, slug)
    event = f'[{now},{user_pk},"{key_id}",{connection_pk},"{request.META.get("REMOTE_ADDR")}"]'
    counter = cache.make_key(f"token-rate:{key_id}:{int(now // 60)}")
    if _run_script(["grant-gen", counter, "audit-queue"], [generation, settings.TOKEN_RATE_LIMIT_PER_MINUTE, event]) < 0:
        return views.connection_token(request, slug)
    response = HttpResponse(f'{body_prefix}, "expires_in": {int(expires_ts - now)}, {body_suffix}', content_type="application/json")
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


@require_GET
def token_prototype_cached(request: HttpRequest, slug: str) -> HttpResponse:
    return _cached(request, slug)
