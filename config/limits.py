"""Request body limits, decided before the body is read: 413 past the size limit, 411 for a
chunked body that cannot be read, and a time limit on a body's arrival (408)."""

from __future__ import annotations

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import JsonResponse

from config.errors import error_body


def payload_too_large(request, limit: int) -> JsonResponse:
    message = f"Request body is larger than the limit of {limit} bytes."
    return JsonResponse(
        error_body("payload_too_large", message, None, getattr(request, "request_id", None)),
        status=413,
    )


class RequestBodyLimitMiddleware:
    """413 for a non-multipart body over DATA_UPLOAD_MAX_MEMORY_SIZE, before it is read.

    DRF 3.18.3 does enforce the limit for JSON (its parser goes through `request.body`), but the
    RequestDataTooBig it raises is no API exception and ends as Django's generic 400; this
    answers 413 in the API's error shape, from the declared length, before any view runs.
    Multipart uploads are bounded by MAX_ARTIFACT_SIZE in the upload view instead (Django
    spools their files to disk).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            # gunicorn refuses these itself; other servers may not, and django-prometheus would
            # fail on it with a 500.
            return JsonResponse(
                error_body(
                    "bad_request",
                    "Malformed Content-Length header.",
                    None,
                    getattr(request, "request_id", None),
                ),
                status=400,
            )
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        content_type = request.META.get("CONTENT_TYPE", "").lower()  # RFC 9110: any case
        if limit is not None and declared > limit and not content_type.startswith("multipart/"):
            return payload_too_large(request, limit)
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower() and not declared:
            refused = _chunked_body(request, limit, content_type)
            if refused is not None:
                return refused
        sock = request.META.get("gunicorn.socket")
        if sock is None or not declared:
            return self.get_response(request)
        # The server reads the body from this socket while the view runs: bound each wait for
        # its next bytes, so a client that stops sending gets a 408 (config.errors) instead of
        # holding the worker until the server's own timeout kills it.
        previous = sock.gettimeout()
        sock.settimeout(settings.REQUEST_BODY_TIMEOUT)
        try:
            return self.get_response(request)
        finally:
            sock.settimeout(previous)


def _chunked_body(request, limit: int | None, content_type: str) -> JsonResponse | None:
    """Makes a `Transfer-Encoding: chunked` body readable, or answers 411.

    Django reads a body by its Content-Length and sees a chunked one as empty (then a 400
    "parse_error" for a body the client did send). A server that decodes the chunks and ends
    the stream itself (`wsgi.input_terminated`, as granian and gunicorn do) lets a JSON body be
    read up to the size limit, lazily (after the token is checked); multipart and form bodies,
    which Django's parsers can only read by length, and servers that don't, get 411.
    """
    form = content_type.startswith(("multipart/", "application/x-www-form-urlencoded"))
    if limit is None or form or not request.META.get("wsgi.input_terminated"):
        return JsonResponse(
            error_body(
                "length_required",
                "A chunked request body is not accepted here: send it with Content-Length.",
                None,
                getattr(request, "request_id", None),
            ),
            status=411,
        )
    # Reading past the limit yields limit + 1 bytes, which config.parsers.read_body answers
    # with 413; the declared length lets DRF see that there is a body at all.
    request._stream = LimitedStream(request.META["wsgi.input"], limit + 1)
    request.META["CONTENT_LENGTH"] = str(limit)
    return None
