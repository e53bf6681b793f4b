"""The token endpoint's answers from memory, given before the middleware a bot's request has no use for.

A bot authenticates with its key in a header: sessions, CSRF, the logged-in user, messages, clickjacking
headers, django-axes's login lockout and static files play no part in its request. A request this process can
answer from memory (connections.endpoint.issuing.token_from_memory) is answered here, right after SecurityMiddleware
(whose HTTPS redirect and headers still apply), with the same response as the view's; any other request goes
on through the whole stack to the view.
"""

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from connections.endpoint import issuing
from connections.endpoint.views import issued_token_response
from connections.http import client_address
from connections.ops import log_context, metrics

# controlroom/urls.py's "api/v1/connections/<str:slug>/token": <str:...> is anything but a slash.
TOKEN_PATH = re.compile(r"/api/v1/connections/(?P<slug>[^/]+)/token")


REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    """Every log line of a request carries its id (connections.ops.log_context), which the answer's X-Request-ID
    header gives back: the caller's own, from a load balancer or a bot, when it is short and plain."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        # Not reset on the way out: Django logs a 4xx or 5xx answer after the middleware has returned it; the
        # thread's next request sets its own.
        log_context.request_id.set(request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class TokenFromMemoryMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        match = TOKEN_PATH.fullmatch(request.path_info) if request.method == "GET" else None
        if match is not None:
            issued = issuing.token_from_memory(
                authorization=request.META.get("HTTP_AUTHORIZATION", ""),
                slug=match["slug"],
                params=request.GET.dict(),
                remote_addr=client_address(request),
            )
            if issued is not None:
                metrics.token_request_counted("issued", from_memory=True)
                return issued_token_response(issued)
        return self.get_response(request)
