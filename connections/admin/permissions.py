from typing import Any

from django.http import HttpRequest

from connections import selectors


class PermissionMixin:
    """Manage connections may change; View connections may only look."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.user_can_view_connections(request.user)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return selectors.user_can_view_connections(request.user)
