"""Tell the people who manage connections when a token needs them: Django email, and the lifecycle webhooks
(connections.notify.webhooks)."""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.mail import send_mail
from django.db.models import Q

from connections.models import Connection, WebhookEndpoint
from connections.notify import webhooks

logger = logging.getLogger(__name__)


def manager_emails() -> list[str]:
    permission = Permission.objects.filter(content_type__app_label="connections", codename="manage_connections")
    users = get_user_model().objects.filter(
        Q(is_superuser=True) | Q(user_permissions__in=permission) | Q(groups__permissions__in=permission),
        is_active=True,
    )
    return sorted(set(users.exclude(email="").values_list("email", flat=True)))


FAILURE_EVENTS = {"token.refresh_failing", "token.reauthorization_required"}


def nobody_told() -> str:
    """A sentence when a failing connection would reach nobody: no active manager with an e-mail address and no
    webhook that gets the failure events; "" when someone will be told."""
    if manager_emails() or settings.NOTIFY_WEBHOOK_URL:
        return ""
    for endpoint in WebhookEndpoint.objects.filter(is_enabled=True).only("events"):
        if not endpoint.events or FAILURE_EVENTS & set(endpoint.events):
            return ""
    return (
        "Nobody will be told when a connection fails: no user who manages connections has an e-mail address, "
        "and no webhook endpoint gets the failure events."
    )


def notify_managers(*, event: str, connection: Connection, subject: str, message: str) -> None:
    """Email the managers and post the event to the webhooks that want it (connections.notify.webhooks, queued with
    retries). Never raises: a notification that cannot be delivered is logged, and the refresh goes on."""
    recipients = manager_emails()
    if recipients:
        try:
            send_mail(f"[Control Room] {subject}", message, None, recipients)
        except Exception:
            logger.exception("Could not email the notification %r for %s", event, connection.slug)
    webhooks.event_emit(event, connection, f"{subject}. {message}")
