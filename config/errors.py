"""One JSON error shape for the whole API:

    {"error": {"type": "...", "message": "...", "fields": {...}, "request_id": "..."}}

Domain errors raised by services carry their own type and status; DRF's and Django's are
mapped here, so views never build error bodies themselves.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from config.logging import request_id_var


class DomainError(Exception):
    """Base of the errors services raise; the API maps them to status codes."""

    status_code = 400
    error_type = "bad_request"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}

    def full_message(self) -> str:
        """The message with its field details, for places without a fields list (admin pages)."""
        details = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in self.fields.items())
        return self.message + (f" ({details})" if details and details not in self.message else "")


class ValidationFailed(DomainError):
    status_code = 400
    error_type = "validation_error"


class NotFoundError(DomainError):
    status_code = 404
    error_type = "not_found"


class ConflictError(DomainError):
    status_code = 409
    error_type = "conflict"


class PayloadTooLarge(DomainError):
    status_code = 413
    error_type = "payload_too_large"


class ForbiddenError(DomainError):
    status_code = 403
    error_type = "permission_denied"


class UnavailableError(DomainError):
    status_code = 503
    error_type = "unavailable"
    retry_after = 30  # seconds: a dependency outage is answered with when to come back


def error_body(
    error_type: str,
    message: str,
    fields: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": error_type, "message": message}
    if fields:
        body["fields"] = fields
    body["request_id"] = request_id or request_id_var.get()
    return {"error": body}


def _flatten_drf_detail(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turns DRF's nested error detail into {"field.sub": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and not prefix:
                name = "non_field_errors"
            out.update(_flatten_drf_detail(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(
                    _flatten_drf_detail(item, f"{prefix}[{index}]" if prefix else f"[{index}]")
                )
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


_DRF_TYPES = {
    drf_exceptions.ParseError: "parse_error",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "throttled",
    drf_exceptions.ValidationError: "validation_error",
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    request = context.get("request")
    request_id = getattr(request, "request_id", None)
    if isinstance(exc, DomainError):
        retry_after = getattr(exc, "retry_after", None)
        return Response(
            error_body(exc.error_type, exc.message, exc.fields, request_id),
            status=exc.status_code,
            headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if not isinstance(exc, drf_exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500

    error_type = next((t for cls, t in _DRF_TYPES.items() if isinstance(exc, cls)), "error")
    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(int(exc.wait) + (0 if float(exc.wait).is_integer() else 1))
    if isinstance(exc, drf_exceptions.ValidationError):
        fields = _flatten_drf_detail(exc.detail)
        message = "Invalid input: " + "; ".join(
            f"{name}: {' '.join(msgs)}" for name, msgs in list(fields.items())[:5]
        )
        body = error_body(error_type, message, fields, request_id)
    else:
        body = error_body(error_type, str(exc.detail), None, request_id)
    return Response(body, status=exc.status_code, headers=headers)


def _json_error(request, status: int, error_type: str, message: str) -> JsonResponse:
    return JsonResponse(
        error_body(error_type, message, None, getattr(request, "request_id", None)), status=status
    )


def handler404(request, exception=None):
    return _json_error(request, 404, "not_found", f"No route for {request.path}.")


def handler500(request):
    return _json_error(request, 500, "server_error", "Internal server error.")


def handler400(request, exception=None):
    return _json_error(request, 400, "bad_request", "Bad request.")


def handler403(request, exception=None):
    return _json_error(request, 403, "permission_denied", "Permission denied.")
