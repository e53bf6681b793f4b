"""Pages for people: Connect and the OAuth callback, the device code page, My connections, the admin's Outbound page
and the site's root."""

from urllib.parse import urlencode

import segno
from celery import current_app
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from kombu.exceptions import OperationalError

from connections import selectors, services
from connections.errors import ConnectionActionError
from connections.flows import authorization, device
from connections.http import client_address, signed_in_user
from connections.models import Connection, ConnectionStatus, DeviceAuthorization, OAuthToken, TokenState
from connections.outbound import facts

DEVICE_POLL_TASK = "connections.tasks.device_authorization_poll"


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
            started = device.device_authorization_start(connection=connection, user=signed_in_user(request))
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
            user=signed_in_user(request),
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


DISABLED = selectors.Status(ConnectionStatus.DISABLED, "Disabled by an administrator")


@require_GET
@login_required
def my_connections(request: HttpRequest) -> HttpResponse:
    """The user-specific connections the user may authorize, with their own token's status; searched (name,
    slug, provider, description) and filtered by status with GET parameters, so a filtered list has a URL; a
    page of MY_CONNECTIONS_PER_PAGE at a time (a person may be invited to thousands); ?connection=<slug> shows that
    one connection only (the link asking a member to authorize it)."""
    search = request.GET.get("q", "").strip()[:200]
    status = request.GET.get("status", "")
    status = status if status in ConnectionStatus.values else ""
    only = request.GET.get("connection", "").strip()[:200]
    page, rows = _my_connection_rows(signed_in_user(request), search, status, only, request.GET.get("p"))
    filters = (("q", search), ("status", status), ("connection", only))
    context = {
        "rows": rows,
        "page": page,
        "other_pages": urlencode({name: value for name, value in filters if value}),
        "search": search,
        "status": status,
        "only": only,
        "statuses": ConnectionStatus.choices,
        "title": "My OAuth connections",
        "site_header": "Control Room",
    }
    return render(request, "connections/my_connections.html", context)


MY_CONNECTIONS_PER_PAGE = 100


def _my_connection_rows(
    user: User, search: str, status: str, only: str, page_number: str | None
) -> tuple[Page, list[dict]]:
    found = selectors.user_specific_connections_for(user)
    if only:
        found = found.filter(slug=only)
    if search:
        found = found.filter(
            Q(name__icontains=search)
            | Q(slug__icontains=search)
            | Q(provider__name__icontains=search)
            | Q(description__icontains=search)
        )
    if status:
        found = _with_my_status(found, user, ConnectionStatus(status))
    page = Paginator(found, MY_CONNECTIONS_PER_PAGE).get_page(page_number)
    connections = list(page.object_list)
    mine = OAuthToken.objects.filter(user=user, connection__in=[connection.pk for connection in connections])
    tokens = {token.connection_id: token for token in mine}
    rows = []
    for connection in connections:
        token = tokens.get(connection.pk)
        row_status = selectors.token_status(token) if connection.is_enabled else DISABLED
        rows.append({"connection": connection, "status": row_status, "token": token})
    return page, rows


def _with_my_status(connections: QuerySet[Connection], user: User, code: ConnectionStatus) -> QuerySet[Connection]:
    """The connections on which the user's own token has this status (selectors.token_status), in the database:
    only the page's rows are read."""
    if code == ConnectionStatus.DISABLED:
        return connections.filter(is_enabled=False)
    mine = OAuthToken.objects.filter(user=user, connection=OuterRef("pk"))
    if code == ConnectionStatus.NOT_CONNECTED:
        return connections.filter(~Exists(mine), is_enabled=True)
    state = {
        ConnectionStatus.CONNECTED: TokenState.ACTIVE,
        ConnectionStatus.REFRESH_FAILING: TokenState.REFRESH_FAILING,
        ConnectionStatus.REAUTHORIZATION_REQUIRED: TokenState.REAUTHORIZATION_REQUIRED,
    }[code]
    return connections.filter(Exists(mine.filter(state=state)), is_enabled=True)


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
    user = signed_in_user(request)
    try:
        message = services.connection_disconnect(connection=connection, actor=user, only_user=user)
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
        "policy": facts.policy_in_effect(),
        "may_check": may_check,
        "url": url,
        "verdict": facts.url_verdict(url) if url else None,
    }
    return TemplateResponse(request, "admin/connections/outbound.html", context)


@require_GET
def bots_page(request: HttpRequest) -> HttpResponse:
    """The admin's "Bots: getting a token" (behind admin_view, in controlroom.urls): what a deployed instance's
    people need to give a bot its token, with this site's address, where no README is at hand."""
    context = {**admin.site.each_context(request), "title": "Bots: getting a token", "public_url": settings.PUBLIC_URL}
    return TemplateResponse(request, "admin/connections/bots.html", context)
