"""GET /api/v1/connections/<slug>/token: the token endpoint's view (an answer from memory was given already by
connections.endpoint.middleware); ANY /api/v1/connections/<slug>/proxy/<path>: the API proxy's."""

import re

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from connections import errors
from connections.endpoint import issuing, proxy
from connections.http import client_address
from connections.ops import log_context, metrics


@csrf_exempt  # a bot key in a header, no cookie: nothing for CSRF to protect, and a bot should get JSON
def connection_token(request: HttpRequest, slug: str) -> JsonResponse:
    """GET /api/v1/connections/<slug>/token — bots authenticate with 'Authorization: Bearer <bot key>'. A request
    like one this process has just answered was answered from memory already (connections.endpoint.middleware)."""
    if request.method != "GET":
        detail = f"The token endpoint answers GET, not {(request.method or '')[:10]}: GET {request.path}"
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
        return issued_token_response(issued)
    except errors.TokenRequestError as exc:
        metrics.token_request_counted(exc.error, from_memory=False)
        return error_response(exc)


def issued_token_response(issued: issuing.IssuedToken) -> JsonResponse:
    return _not_cached(JsonResponse(issued.as_json(timezone.now())))


def _not_cached(response: JsonResponse) -> JsonResponse:
    # The body may hold an access token: no cache, browser or proxy, may keep it (RFC 6749 5.1).
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    # As CommonMiddleware sets it, which a bot's request does not pass through (connections.endpoint.middleware):
    # without it the server would send the body chunked, or close the connection after it.
    response["Content-Length"] = str(len(response.content))
    return response


# The part after /proxy/ in the request line as the client sent it (gunicorn's RAW_URI, uWSGI's REQUEST_URI), which
# still shows what PATH_INFO has decoded: an encoded slash must be refused, not taken for a slash.
RAW_PROXY_PATH = re.compile(r"/api/v1/connections/[^/?#]+/proxy/(?P<path>[^?#]*)")


@csrf_exempt  # a bot key in a header, no cookie: nothing for CSRF to protect
def connection_proxy(request: HttpRequest, slug: str, path: str = "") -> HttpResponseBase:
    """ANY /api/v1/connections/<slug>/proxy/<path>: the connection's API, called with its token (connections.
    endpoint.proxy). The body is read here as a stream, never through request.body."""
    meta = request.META
    raw = RAW_PROXY_PATH.search(meta.get("RAW_URI") or meta.get("REQUEST_URI") or "")
    length = meta.get("CONTENT_LENGTH") or ""
    chunked = "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower() and bool(meta.get("wsgi.input_terminated"))
    try:
        with log_context.about_connection(slug[:120]):
            if length and not length.isdigit():
                raise errors.TokenRequestError(400, "bad_request", "Content-Length must be a whole number.")
            # Django reads no body without a Content-Length; a chunked one comes from the server's own stream.
            read = meta["wsgi.input"].read if chunked and not length else request.read
            answer = proxy.proxy_call(
                authorization=meta.get("HTTP_AUTHORIZATION", ""),
                slug=slug,
                request=proxy.ProxyRequest(
                    method=request.method or "GET",
                    path=raw["path"] if raw else path,
                    query=meta.get("QUERY_STRING", ""),
                    headers=dict(request.headers),
                    body=proxy.body_read(read, int(length) if length else None, chunked),
                ),
                remote_addr=client_address(request),
            )
    except errors.TokenRequestError as exc:
        refusal = error_response(exc)
        # Tells Control Room's own refusal from an API's answer that looks alike (controlroom_client.proxy).
        refusal["X-ControlRoom-Error"] = exc.error
        return refusal
    relayed = StreamingHttpResponse(answer.body, status=answer.status)
    del relayed["Content-Type"]  # the API's own, if it sent one
    for name, value in answer.headers:
        relayed[name] = value
    return relayed


def error_response(exc: errors.TokenRequestError) -> JsonResponse:
    response = JsonResponse({"error": exc.error, "detail": exc.detail}, status=exc.status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="controlroom"'
    return _not_cached(response)
