"""Request body limits: 413 in the API's error shape, decided before the body is read."""

from __future__ import annotations

from django.conf import settings
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
        content_type = request.META.get("CONTENT_TYPE", "")
        if limit is not None and declared > limit and not content_type.startswith("multipart/"):
            return payload_too_large(request, limit)
        return self.get_response(request)
