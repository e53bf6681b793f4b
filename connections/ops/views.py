"""The operators' endpoints: /metrics, /livez, /readyz, /healthz."""

import hmac

from celery import current_app
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from connections.ops import health, scrape


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics for Prometheus: off (404) unless METRICS_TOKEN is set, then only for its bearer."""
    if not settings.METRICS_TOKEN:
        raise Http404("Metrics are off: set METRICS_TOKEN to turn them on.")
    expected = f"Bearer {settings.METRICS_TOKEN}".encode()
    if not hmac.compare_digest(request.META.get("HTTP_AUTHORIZATION", "").encode(), expected):
        response = JsonResponse({"error": "invalid_token", "detail": "Send Authorization: Bearer <METRICS_TOKEN>."})
        response.status_code = 401
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = scrape.metrics_exposition()
    return HttpResponse(body, content_type=content_type)


@never_cache
def livez(request: HttpRequest) -> JsonResponse:
    """The container's health check: this process serves requests. No I/O, so nothing else can fail it."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """The load balancer's probe: the database and the cache answer. Beat and workers down do not fail it."""
    report = health.readiness_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """For alerting: everything, beat, workers and the refresh backlog included."""
    report = health.health_report(current_app)
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
