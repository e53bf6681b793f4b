"""The app's URLs plus /bench/bare, the cheapest possible Django view (the ceiling for any JSON endpoint)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from controlroom.urls import urlpatterns as app_urlpatterns


def bare(request: HttpRequest) -> JsonResponse:
    # No database, no cache: what remains is gunicorn, WSGI, middleware, URL resolving and JSON encoding.
    return JsonResponse({"ok": True})


urlpatterns = [
    *app_urlpatterns,
    path("bench/bare", bare, name="bench_bare"),
]
