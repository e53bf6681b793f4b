"""Which writes invalidate the token endpoint's cached answers (connections.cache.token_cache), in one place.

Saves and deletes arrive as Django signals, connected by ConnectionsConfig.ready(). QuerySet.update() sends
none: the services that update these rows call token_rows_changed() / identity_rows_changed() themselves.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save

from connections.cache import token_cache
from connections.models import BotKey, Connection, OAuthToken, Role
from providers.models import Provider


def identity_rows_changed() -> None:
    """Keys, users, roles, invitations, connection settings or provider types changed: every cached answer may be
    wrong."""
    token_cache.identity_changed()


def token_rows_changed(slug: str) -> None:
    """A token of this connection changed: its cached answers may hand out the old one."""
    token_cache.token_changed(slug)


def _identity_changed(**kwargs: Any) -> None:
    identity_rows_changed()


def _user_changed(update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    if update_fields != frozenset({"last_login"}):  # a login changes nothing an answer holds
        identity_rows_changed()


def _token_saved(instance: OAuthToken, **kwargs: Any) -> None:
    token_rows_changed(instance.connection.slug)


def _token_deleted(**kwargs: Any) -> None:
    # Other processes see the row gone; this one forgets every answer, as the connection (and so its slug) may be
    # going too.
    token_cache.forget_all()


def connect() -> None:
    user_model = get_user_model()
    # A provider type's API base and token header are kept with the API proxy's answers.
    for sender in (BotKey, Connection, Provider, user_model):
        receiver = _user_changed if sender is user_model else _identity_changed
        post_save.connect(receiver, sender=sender, dispatch_uid=f"token_cache.{sender.__name__}.save")
        post_delete.connect(receiver, sender=sender, dispatch_uid=f"token_cache.{sender.__name__}.delete")
    # A role's invitations and memberships go with it, with no m2m signal. Django names the deleted instance's own
    # class as the sender: Role (the proxy the admin deletes) as well as Group.
    for role_model in (Group, Role):
        post_delete.connect(
            _identity_changed, sender=role_model, dispatch_uid=f"token_cache.{role_model.__name__}.delete"
        )
    for through in (Connection.roles.through, user_model.groups.through):
        m2m_changed.connect(_identity_changed, sender=through, dispatch_uid=f"token_cache.{through.__name__}")
    post_save.connect(_token_saved, sender=OAuthToken, dispatch_uid="token_cache.OAuthToken.save")
    post_delete.connect(_token_deleted, sender=OAuthToken, dispatch_uid="token_cache.OAuthToken.delete")
