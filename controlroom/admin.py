"""The admin site: Control Room's titles and home page, "View site" leading to My connections, and the apps in
the order an administrator needs them, the login-security tables of django-axes last."""

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse_lazy

LISTED_LAST = ("axes",)


class ControlRoomAdminSite(admin.AdminSite):
    site_header = "Control Room"
    site_title = "Control Room"
    index_title = "Administration"
    index_template = "admin/connections/index.html"  # getting started, the dashboard and Outbound pages
    login_template = "connections/login.html"  # the same page as /accounts/login/: Sign in with <provider> too
    # Resolved when a page is drawn (the URLs are not loaded yet here). django-stubs types site_url as str | None,
    # but Django only compares it with "/" and hands it to the templates, where a lazy string is text.
    site_url = reverse_lazy("my_connections")  # type: ignore[assignment]

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
        # Getting started's curl shows the address bots use.
        return super().index(request, {"public_url": settings.PUBLIC_URL, **(extra_context or {})})

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = super().get_app_list(request, app_label)
        return sorted(apps, key=lambda app: app["app_label"] in LISTED_LAST)  # stable: alphabetical otherwise


class ControlRoomAdminConfig(AdminConfig):
    default_site = "controlroom.admin.ControlRoomAdminSite"
