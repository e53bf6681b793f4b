"""The admin: connections (with their tokens), audit events, roles, bot keys and webhook endpoints, each in a
module of its own."""

from django.contrib import admin
from django.contrib.auth.models import Group

from connections.admin.audit_event import AuditEventAdmin
from connections.admin.bot_key import BotKeyAdmin
from connections.admin.connection import ConnectionAdmin
from connections.admin.role import RoleAdmin
from connections.admin.webhook import WebhookEndpointAdmin

__all__ = ["AuditEventAdmin", "BotKeyAdmin", "ConnectionAdmin", "RoleAdmin", "WebhookEndpointAdmin"]

admin.site.unregister(Group)  # shown as a Role, with what matters here
