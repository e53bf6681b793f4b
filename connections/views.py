import hmac
import ipaddress

import segno
from celery import current_app
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from kombu.exceptions import OperationalError

from connections import (
    authorization,
    device,
    health,
    issuing,
    log_context,
    metrics,
    metrics_scrape,
    outbound_facts,
    selectors,
    services,
)
from connections.errors import ConnectionActionError
from connections.models import Connection, DeviceAuthorization, OAuthToken

DEVICE_POLL_TASK = "connections.tasks.device_authorization_poll"


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


def _safe_next(request: HttpRequest, fallback: str) -> str:
    candidate = request.POST.get("next", "")
    # Kept with the flow (at most 500 characters) and later redirected to: a short local path, nothing else.
    if (
        candidate
        and len(candidate) <= 500
        and candidate.isprintable()
        and url_has_allowed_host_and_scheme(candidate, {request.get_host()}, request.is_secure())
    ):
        return candidate
    return fallback


@require_POST
@login_required
def oauth_connect(request: HttpRequest, slug: str) -> HttpResponse:
    connection = Connection.objects.select_related("provider").filter(slug=slug).first()
    # Whether it exists, is disabled or uses client credentials is told only to someone who may authorize it.
    if connection is None or not selectors.user_may_authorize(request.user, connection):
        raise Http404("No connection you may authorize has that name.")
    fallback = (
        reverse("my_connections")
        if connection.is_user_specific and not selectors.user_can_manage_connections(request.user)
        else reverse("admin:connections_connection_change", args=[connection.pk])
    )
    return start_authorization(request, connection, _safe_next(request, fallback))


def start_authorization(request: HttpRequest, connection: Connection, return_url: str) -> HttpResponse:
    """Send the browser to the provider (or, for the Device Code grant, to the page with the user code), or back
    to return_url with the reason it cannot go."""
    if connection.uses_device_code:
        try:
            started = device.device_authorization_start(connection=connection, user=request.user)
        except ConnectionActionError as exc:
            messages.error(request, exc.message)
            return redirect(return_url)
        # Polling is a worker's (connections.tasks), never a web request's; by name: tasks sits above views.
        try:
            current_app.send_task(DEVICE_POLL_TASK, args=(started.pk,), countdown=started.interval)
        except OperationalError as exc:  # the broker is unreachable: nobody would poll, so it ends here, said
            message = f"No worker could be asked to wait for the approval ({type(exc).__name__}): try again."
            device.device_authorization_end(started.pk, message)
            messages.error(request, message)
            return redirect(return_url)
        return redirect("device_authorization", started.pk)
    if not request.session.session_key:
        request.session.save()
    try:
        url = authorization.connection_authorize_start(
            connection=connection,
            user=request.user,
            session_key=request.session.session_key or "",
            return_url=return_url,
            remote_addr=client_address(request),
        )
    except ConnectionActionError as exc:
        messages.error(request, exc.message)
        return redirect(return_url)
    return HttpResponseRedirect(url)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """/: people who only authorize their own tokens to My connections, everyone else to the admin (its login
    page, for someone not signed in). The admin's "View site" goes to My connections (controlroom.admin)."""
    if request.user.is_authenticated and not request.user.is_staff:
        return redirect("my_connections")
    return redirect("admin:index")


@require_GET
@never_cache
@login_required
def device_authorization_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The user code and where to enter it, with its QR code; the page reloads itself until the worker that polls
    the provider has an answer."""
    started = get_object_or_404(DeviceAuthorization.objects.select_related("connection"), pk=pk)
    manager = selectors.user_can_manage_connections(request.user)
    if started.started_by_id != request.user.pk and not manager:
        raise Http404("No device authorization of yours has that number.")
    started = device.device_authorization_expired(started)  # past its expiry with no poll to say so
    link = started.verification_uri_complete or started.verification_uri
    back = (
        reverse("admin:connections_connection_change", args=[started.connection_id])
        if manager
        else reverse("my_connections")
    )
    context = {
        "started": started,
        "pending": started.status == DeviceAuthorization.Status.PENDING,
        "qr_code": segno.make(link, error="m").svg_inline(scale=4, dark="#000", light="#fff"),
        "back": back,
        "title": f"Connect {started.connection}",
    }
    return render(request, "connections/device_authorization.html", context)


@require_GET
@never_cache
def oauth_callback(request: HttpRequest) -> HttpResponse:
    default_return = reverse("my_connections") if request.user.is_authenticated else reverse("admin:index")
    try:
        result = authorization.connection_authorize_complete(
            params=request.GET.dict(),
            session_key=request.session.session_key or "",
            default_return_url=default_return,
            remote_addr=client_address(request),
        )
    except ConnectionActionError as exc:
        messages.error(request, exc.message)
        return redirect(exc.return_url or default_return)
    status = selectors.token_status(result.token)
    messages.success(request, f"{result.connection} is connected ({status.expiry_text}).")
    return redirect(result.return_url)


MY_STATUSES = [(code, code.replace("_", " ").capitalize()) for code in selectors.STATUSES]
DISABLED = selectors.Status("disabled", "Disabled by an administrator")


@require_GET
@login_required
def my_connections(request: HttpRequest) -> HttpResponse:
    """The user-specific connections the user may authorize, with their own token's status; searched (name,
    slug, provider, description) and filtered by status with GET parameters, so a filtered list has a URL."""
    search = request.GET.get("q", "").strip()[:200]
    status = request.GET.get("status", "")
    status = status if status in selectors.STATUSES else ""
    context = {
        "rows": _my_connection_rows(request.user, search, status),
        "search": search,
        "status": status,
        "statuses": MY_STATUSES,
        "title": "My OAuth connections",
        "site_header": "Control Room",
    }
    return render(request, "connections/my_connections.html", context)


def _my_connection_rows(user: selectors.AnyUser, search: str, status: str) -> list[dict]:
    connections = selectors.user_specific_connections_for(user)
    if search:
        connections = connections.filter(
            Q(name__icontains=search)
            | Q(slug__icontains=search)
            | Q(provider__name__icontains=search)
            | Q(description__icontains=search)
        )
    connections = list(connections)
    mine = OAuthToken.objects.filter(user=user, connection__in=[connection.pk for connection in connections])
    tokens = {token.connection_id: token for token in mine}
    rows = []
    for connection in connections:
        token = tokens.get(connection.pk)
        row_status = selectors.token_status(token) if connection.is_enabled else DISABLED
        if not status or row_status.code == status:
            rows.append({"connection": connection, "status": row_status, "token": token})
    return rows


@require_http_methods(["GET", "POST"])
@login_required
def my_connection_disconnect(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: what disconnecting one's own token does (revoked at the provider or not), to confirm; POST: do it."""
    connection = get_object_or_404(Connection.objects.select_related("provider"), slug=slug)
    if request.method == "GET":
        if not connection.is_user_specific or selectors.token_for(connection, request.user) is None:
            raise Http404("You have no token of that connection to disconnect.")
        context = {
            "connection": connection,
            "revokes": bool(connection.effective_revocation_url),
            "title": f"Disconnect {connection}?",
            "site_header": "Control Room",
        }
        return render(request, "connections/my_connection_disconnect.html", context)
    try:
        message = services.connection_disconnect(connection=connection, actor=request.user, only_user=request.user)
    except ConnectionActionError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, message)
    return redirect("my_connections")


@require_GET
def outbound_page(request: HttpRequest) -> HttpResponse:
    """The admin's Outbound page (behind admin_view, in controlroom.urls): the outbound policy in effect, and what
    it would do with a URL, judged without calling it."""
    if not selectors.user_can_view_connections(request.user):
        raise PermissionDenied
    # The check looks host names up in DNS: for those who may add connections (and so call any URL) only.
    may_check = selectors.user_can_manage_connections(request.user)
    url = request.GET.get("url", "").strip()[:2000] if may_check else ""
    context = {
        **admin.site.each_context(request),
        "title": "Outbound calls",
        "policy": outbound_facts.policy_in_effect(),
        "may_check": may_check,
        "url": url,
        "verdict": outbound_facts.url_verdict(url) if url else None,
    }
    return TemplateResponse(request, "admin/connections/outbound.html", context)


@csrf_exempt  # a bot key in a header, no cookie: nothing for CSRF to protect, and a bot should get JSON
def connection_token(request: HttpRequest, slug: str) -> JsonResponse:
    """GET /api/v1/connections/<slug>/token — bots authenticate with 'Authorization: Bearer <bot key>'. A request
    like one this process has just answered was answered from memory already (connections.middleware)."""
    if request.method != "GET":
        detail = f"The token endpoint answers GET, not {request.method[:10]}: GET {request.path}"
        response = JsonResponse({"error": "method_not_allowed", "detail": detail}, status=405)
        response["Allow"] = "GET"
        return _not_cached(response)
    try:
        with log_context.about_connection(slug[:120]):
            issued = issuing.token_request(
                authorization=request.META.get("HTTP_AUTHORIZATION", ""),
                slug=slug,
                params=request.GET.dict(),
                remote_addr=client_address(request),
            )
        metrics.token_request_counted("issued", from_memory=False)
        return token_response(issued)
    except issuing.TokenRequestError as exc:
        metrics.token_request_counted(exc.error, from_memory=False)
        response = JsonResponse({"error": exc.error, "detail": exc.detail}, status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="controlroom"'
        return _not_cached(response)


def token_response(issued: issuing.IssuedToken) -> JsonResponse:
    response = JsonResponse(issued.as_json(timezone.now()))
    # As CommonMiddleware sets it, which an answer from memory does not pass through: without it the server
    # would send the body chunked, or close the connection after it.
    response["Content-Length"] = str(len(response.content))
    return _not_cached(response)


def _not_cached(response: JsonResponse) -> JsonResponse:
    # The body may hold an access token: no cache, browser or proxy, may keep it (RFC 6749 5.1).
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


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
    body, content_type = metrics_scrape.metrics_exposition()
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
