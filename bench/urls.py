"""The app's URLs plus bench-only views: /bench/bare, the cheapest possible Django view (the ceiling for any
JSON endpoint), and the token endpoint prototypes of bench/prototype.py."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from bench.prototype import token_prototype, token_prototype_cached, token_prototype_no_audit
from controlroom.urls import urlpatterns as app_urlpatterns


def bare(request: HttpRequest) -> JsonResponse:
    # No database, no cache: what remains is gunicorn, WSGI, middleware, URL resolving and JSON encoding.
    return JsonResponse({"ok": True})


urlpatterns = [
    *app_urlpatterns,
    path("bench/bare", bare, name="bench_bare"),
    path("bench/prototype/<str:slug>/token", token_prototype),
    path("bench/prototype-no-audit/<str:slug>/token", token_prototype_no_audit),
    path("bench/prototype-cached/<str:slug>/token", token_prototype_cached),
]
