"""Tell the people who manage connections when a token needs them: Django email, plus an optional webhook sent
under the outbound policy (connections.outbound).

The webhook body is JSON, signed with HMAC-SHA256 under NOTIFY_WEBHOOK_SECRET in the X-ControlRoom-Signature
header (`sha256=<hex>`), as GitHub signs its webhooks, so the receiver can check where it came from.
"""

import hashlib
import hmac
import json
import logging

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.mail import send_mail
from django.db.models import Q
from django.utils import timezone

from connections import outbound
from connections.models import Connection

logger = logging.getLogger(__name__)


def manager_emails() -> list[str]:
    permission = Permission.objects.filter(content_type__app_label="connections", codename="manage_connections")
    users = get_user_model().objects.filter(
        Q(is_superuser=True) | Q(user_permissions__in=permission) | Q(groups__permissions__in=permission),
        is_active=True,
    )
    return sorted(set(users.exclude(email="").values_list("email", flat=True)))


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def notify_managers(*, event: str, connection: Connection, subject: str, message: str) -> None:
    """Never raises: a notification that cannot be delivered is logged, and the refresh goes on."""
    recipients = manager_emails()
    if recipients:
        try:
            send_mail(f"[Control Room] {subject}", message, None, recipients)
        except Exception:
            logger.exception("Could not email the notification %r for %s", event, connection.slug)
    if settings.NOTIFY_WEBHOOK_URL:
        body = json.dumps(
            {
                "event": event,
                "connection": connection.slug,
                "subject": subject,
                "message": message,
                "at": timezone.now().isoformat(),
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if settings.NOTIFY_WEBHOOK_SECRET:
            headers["X-ControlRoom-Signature"] = sign(body, settings.NOTIFY_WEBHOOK_SECRET)
        _webhook_post(event, connection, body, headers)


def _webhook_post(event: str, connection: Connection, body: bytes, headers: dict[str, str]) -> None:
    # Through the outbound policy, like a provider call: the proxy, https only, the SSRF guard, the deadline.
    try:
        response = outbound.policy_session().post(settings.NOTIFY_WEBHOOK_URL, data=body, headers=headers)
    except outbound.ProviderError as exc:
        logger.warning("Could not deliver the webhook %r for %s: %s", event, connection.slug, exc.message)
    except requests.RequestException as exc:
        logger.warning("Could not deliver the webhook %r for %s: %s", event, connection.slug, type(exc).__name__)
    else:
        if not 200 <= response.status_code < 300:
            logger.warning("The webhook answered HTTP %s to %r for %s", response.status_code, event, connection.slug)
