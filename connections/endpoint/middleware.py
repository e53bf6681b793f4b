"""A bot's requests, answered before the middleware they have no use for.

A bot authenticates with its key in a header: sessions, CSRF, the logged-in user, messages, clickjacking
headers, django-axes's login lockout and static files play no part in its request. Right after SecurityMiddleware
(whose HTTPS redirect and headers still apply), with its Host checked against ALLOWED_HOSTS as CommonMiddleware
would, a token request this process can answer from memory (connections.endpoint.issuing.token_from_memory) is
answered with the same response as the view's, and any other token request or call of the API proxy goes straight
to its view (the one the URL configuration routes it to); every other request goes on through the whole stack.
"""

import itertools
import os
import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from connections.endpoint import issuing
from connections.endpoint.views import connection_proxy, connection_token, issued_token_response
from connections.http import client_address
from connections.ops import log_context, metrics

# controlroom/urls.py's "api/v1/connections/<str:slug>/token": <str:...> is anything but a slash.
TOKEN_PATH = re.compile(r"/api/v1/connections/(?P<slug>[^/]+)/token")
BOT_PATHS = "/api/v1/connections/"
# Its "api/v1/connections/<str:slug>/proxy/" and ".../proxy/<path:path>".
PROXY_PATH = re.compile(r"/api/v1/connections/(?P<slug>[^/]+)/proxy/(?P<path>.*)")


REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


_request_ids = itertools.count(1)
_request_id_prefix: tuple[int, str] = (0, "")  # (pid, random hex) of the process that made it


def _request_id_new() -> str:
    """Unique, not secret: a random prefix per process and a count. Not uuid4, which reads the kernel's random
    source on every request."""
    global _request_id_prefix
    pid, prefix = _request_id_prefix
    if pid != os.getpid():  # a forked child makes its own
        pid, prefix = _request_id_prefix = (os.getpid(), uuid.uuid4().hex[:16])
    return f"{prefix}{next(_request_ids):016x}"  # 32 hex digits, as a uuid4 gave


class RequestIdMiddleware:
    """Every log line of a request carries its id (connections.ops.log_context), which the answer's X-Request-ID
    header gives back: the caller's own, from a load balancer or a bot, when it is short and plain."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = given if REQUEST_ID.fullmatch(given) else _request_id_new()
        # Not reset on the way out: Django logs a 4xx or 5xx answer after the middleware has returned it; the
        # thread's next request sets its own.
        log_context.request_id.set(request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class BotRequestMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        path = request.path_info
        if not path.startswith(BOT_PATHS):
            return self.get_response(request)
        if proxied := PROXY_PATH.fullmatch(path):
            request.get_host()  # DisallowedHost (400) for a Host that ALLOWED_HOSTS does not name
            return connection_proxy(request, proxied["slug"], proxied["path"])
        if token := TOKEN_PATH.fullmatch(path):
            request.get_host()
            if request.method == "GET":
                issued = issuing.token_from_memory(
                    authorization=request.META.get("HTTP_AUTHORIZATION", ""),
                    slug=token["slug"],
                    params=request.GET.dict(),
                    remote_addr=client_address(request),
                )
                if issued is not None:
                    metrics.token_request_counted("issued", from_memory=True)
                    return issued_token_response(issued)
            return connection_token(request, token["slug"])
        return self.get_response(request)
