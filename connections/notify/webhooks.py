"""Lifecycle webhooks: an event about a connection is posted to every enabled endpoint that wants it (and to the
environment's NOTIFY_WEBHOOK_URL, which gets them all), by a Celery task that retries with backoff, so a receiver
down for a while misses nothing.

Each post is JSON, signed with HMAC-SHA256 of its exact body under the endpoint's secret in the
X-ControlRoom-Signature header (`sha256=<hex>`, as GitHub signs its webhooks), with the event's name in
X-ControlRoom-Event and its id in X-ControlRoom-Delivery (the same on every retry: a receiver can drop repeats).
It goes out under the outbound policy (the proxy, https only, the private-address guard, the deadline).
"""

import functools
import hashlib
import hmac
import json
import logging
import random
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from connections import errors
from connections.audit.events import Action, Outcome, audit_record
from connections.errors import DeliveryFailed
from connections.models import Connection, WebhookEndpoint
from connections.outbound import policy

logger = logging.getLogger(__name__)

EVENTS = {
    "connection.connected": "A connection (or a user's token of it) was authorized",
    "connection.disconnected": "A connection's tokens were disconnected",
    "token.refresh_failing": "Refreshing a token keeps failing",
    "token.refresh_recovered": "Refreshing a token works again",
    "token.reauthorization_required": "A token needs to be authorized again",
    "authorization.requested": "A member was asked to authorize a connection",  # connections.people.asks
    "credential.expiring": "A client secret, signing certificate or refresh token expires in 30, 7 or 1 day(s)",
}
TEST_EVENT = "test"
DELIVER_TASK = "connections.tasks.webhook_deliver"
RETRY_DELAYS = (5, 10, 20, 40, 80, 160, 320, 600)  # seconds before each retry: about 20 minutes in all
ENVIRONMENT = 0  # the endpoint id that stands for NOTIFY_WEBHOOK_URL


@dataclass(frozen=True)
class _Target:
    url: str
    secret: str = field(repr=False)
    endpoint: WebhookEndpoint | None  # None: the environment's NOTIFY_WEBHOOK_URL


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: User | None) -> None:
    """Delete an endpoint, with an audit event that says which (its name and host, never its secret)."""
    with transaction.atomic():
        audit_record(
            action=Action.WEBHOOK_DELETE,
            outcome=Outcome.SUCCESS,
            actor=actor,
            detail=f"Webhook endpoint {endpoint.name} ({urlsplit(endpoint.url).hostname or 'no host'})",
        )
        endpoint.delete()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_emit(event: str, connection: Connection | None, message: str, *, only: WebhookEndpoint | None = None) -> int:
    """Queue the event for the endpoints that want it (or `only` that one), once the caller's transaction has
    committed; how many were queued."""
    body = json.dumps(
        {
            "id": uuid.uuid4().hex,
            "event": event,
            "connection": connection.slug if connection else None,
            "message": message,
            "at": timezone.now().isoformat(),
        }
    )
    if only is not None:
        targets = [only.pk]
    else:
        enabled = WebhookEndpoint.objects.filter(is_enabled=True)
        targets = [endpoint.pk for endpoint in enabled if not endpoint.events or event in endpoint.events]
        targets += [ENVIRONMENT] if settings.NOTIFY_WEBHOOK_URL else []
    for endpoint_id in targets:
        transaction.on_commit(functools.partial(_queue, endpoint_id, body))
    return len(targets)


def _queue(endpoint_id: int, body: str) -> None:
    # By name where the task is not loaded (a web process); through the task where it is (a worker, or a test
    # that runs tasks at once).
    task = current_app.tasks.get(DELIVER_TASK)
    try:
        if task is not None:
            task.apply_async((endpoint_id, body))
        else:
            current_app.send_task(DELIVER_TASK, args=(endpoint_id, body))
    except Exception:  # the broker: the event is lost, said in the log (the action that caused it stands)
        logger.exception("Could not queue a webhook delivery to endpoint %s.", endpoint_id)


def webhook_deliver(endpoint_id: int, body: str) -> None:
    """One attempt to post an event; DeliveryFailed (retry: worth trying again) when it was not taken."""
    target = _target(endpoint_id)
    if target is None:
        return  # the endpoint was deleted or disabled meanwhile
    event = json.loads(body)
    headers = {
        "Content-Type": "application/json",
        "X-ControlRoom-Event": event["event"],
        "X-ControlRoom-Delivery": event["id"],
    }
    if target.secret:
        headers["X-ControlRoom-Signature"] = sign(body.encode(), target.secret)
    try:
        response = policy.policy_session().post(target.url, data=body.encode(), headers=headers)
    except errors.OutboundError as exc:  # refused by the outbound policy, or the deadline
        _record(target, f"not sent: {exc.message}")
        raise DeliveryFailed(exc.message, retry=not exc.permanent) from None
    except requests.RequestException as exc:
        _record(target, f"not delivered: {type(exc).__name__}")
        raise DeliveryFailed(type(exc).__name__, retry=True) from None
    _record(target, f"HTTP {response.status_code}")
    if not 200 <= response.status_code < 300:
        retry = response.status_code >= 500 or response.status_code in (408, 429)
        raise DeliveryFailed(f"HTTP {response.status_code}", retry=retry)


def retry_delay(retries: int) -> float:
    """Seconds before the next attempt after `retries` failed ones, with jitter (receivers coming back are not
    hit by every sender at once)."""
    return RETRY_DELAYS[min(retries, len(RETRY_DELAYS) - 1)] * random.uniform(0.8, 1.2)  # noqa: S311 - not security


def delivery_given_up(endpoint_id: int, body: str, failure: DeliveryFailed) -> None:
    event = json.loads(body)
    logger.warning("The webhook %s to endpoint %s was given up: %s", event["event"], endpoint_id, failure.message)


def _target(endpoint_id: int) -> _Target | None:
    if endpoint_id == ENVIRONMENT:
        url = settings.NOTIFY_WEBHOOK_URL
        return _Target(url, settings.NOTIFY_WEBHOOK_SECRET, None) if url else None
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, is_enabled=True).first()
    return _Target(endpoint.url, endpoint.secret, endpoint) if endpoint else None


def _record(target: _Target, status: str) -> None:
    """The endpoint's last delivery, as its admin page shows it."""
    if target.endpoint is not None:
        WebhookEndpoint.objects.filter(pk=target.endpoint.pk).update(
            last_delivery_at=timezone.now(), last_status=status[:200]
        )
