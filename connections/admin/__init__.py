"""The admin: connections (with their tokens), audit events, roles, users (with their roles), bot keys and
webhook endpoints, each in a module of its own."""

from django.contrib import admin
from django.contrib.auth.models import Group

from connections.admin.audit_event import AuditEventAdmin
from connections.admin.bot_account import BotAccountAdmin
from connections.admin.bot_key import BotKeyAdmin
from connections.admin.connection import ConnectionAdmin
from connections.admin.role import RoleAdmin
from connections.admin.user import ControlRoomUserAdmin
from connections.admin.webhook import WebhookEndpointAdmin

__all__ = [
    "AuditEventAdmin",
    "BotAccountAdmin",
    "BotKeyAdmin",
    "ConnectionAdmin",
    "ControlRoomUserAdmin",
    "RoleAdmin",
    "WebhookEndpointAdmin",
]

admin.site.unregister(Group)  # shown as a Role, with what matters here
