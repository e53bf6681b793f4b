"""What the HTTP edges (the token endpoint, the pages for people, django-axes) need to know of a request."""

import ipaddress
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

if TYPE_CHECKING:  # the user model as a type only: this module imports no model at run time
    from django.contrib.auth.models import User


def client_address(request: HttpRequest) -> str | None:
    """Who sent the request: REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies that each append the address they
    got the request from to X-Forwarded-For (nginx's $proxy_add_x_forwarded_for, most load balancers), the
    address the outermost trusted proxy saw. Read from the right, so a client cannot choose it by sending the
    header itself (Werkzeug's ProxyFix does the same). Also the address django-axes locks out."""
    remote = request.META.get("REMOTE_ADDR")
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    chain = [*forwarded, remote]
    if not proxies or len(chain) <= proxies:
        return remote
    try:
        return str(ipaddress.ip_address(chain[-(proxies + 1)]))
    except ValueError:  # a proxy that writes something else is misconfigured: trust nothing it says
        return remote


def signed_in_user(request: HttpRequest) -> "User":
    """The person a page acts for. Every page that acts for someone is behind login_required or the admin's
    admin_view, so they are signed in; anyone else is refused rather than acted for."""
    user = request.user
    if not user.is_authenticated:
        raise PermissionDenied
    return user
