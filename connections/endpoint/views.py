"""GET /api/v1/connections/<slug>/token: the token endpoint's view (an answer from memory was given already by
connections.endpoint.middleware)."""

from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from connections import errors
from connections.endpoint import issuing
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
        response = JsonResponse({"error": exc.error, "detail": exc.detail}, status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="controlroom"'
        return _not_cached(response)


def issued_token_response(issued: issuing.IssuedToken) -> JsonResponse:
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
