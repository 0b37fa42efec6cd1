"""One JSON error shape for the whole API:

    {"error": {"type": "...", "message": "...", "fields": {...}, "request_id": "..."}}

Domain errors raised by services carry their own type and status; DRF's and Django's are
mapped here, so views never build error bodies themselves.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DataError as DatabaseDataError
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404, JsonResponse, UnreadablePostError
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

    def with_type(self, error_type: str) -> DomainError:
        """This error answered with a more specific `type` (same status)."""
        self.error_type = error_type
        return self

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


class RequestTimeout(DomainError):
    """The request body did not arrive in time (REQUEST_BODY_TIMEOUT), or broke off."""

    status_code = 408
    error_type = "request_timeout"


class LengthRequired(DomainError):
    status_code = 411
    error_type = "length_required"


# Seconds a client is asked to wait after a 503 for a database or cache outage: about the time
# a failover or a restart takes, short enough that a retry soon finds the service back.
RETRY_AFTER_SECONDS = 5

logger = logging.getLogger(__name__)
_outage_logged = {"database": 0.0, "cache": 0.0, "storage": 0.0, "broker": 0.0}


def _cache_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = []
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        types += [RedisConnectionError, RedisTimeoutError]
    except ImportError:  # pragma: no cover - redis is in requirements.txt
        pass
    try:
        from django_redis.exceptions import ConnectionInterrupted

        types.append(ConnectionInterrupted)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


_CACHE_ERRORS = _cache_error_types()


def _broker_error_types() -> tuple[type[BaseException], ...]:
    # kombu raises its OperationalError for a broker it cannot reach (AMQP or Redis), once its
    # connection retries are spent: what a view that sends a task meets in an outage.
    try:
        from kombu.exceptions import OperationalError as BrokerOperationalError
    except ImportError:  # pragma: no cover - kombu comes with celery
        return ()
    return (BrokerOperationalError,)


BROKER_ERRORS = _broker_error_types()

# An object store's answers that mean "not now", not "no": S3's throttling and server errors
# (boto3 raises them as ClientError once its own retries are spent).
_STORAGE_UNAVAILABLE_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500"}
)


def _storage_unavailable(exc: BaseException) -> bool:
    """Whether `exc` is the object store not answering: a connection or timeout error of
    botocore (django-storages' S3 backend), an S3 error code that means try again, or pyarrow's
    S3 filesystem reporting the AWS SDK's network error (an OSError naming it)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is in requirements.txt
        return False
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") in _STORAGE_UNAVAILABLE_CODES
    if isinstance(exc, BotoCoreError):
        return True
    return type(exc) is OSError and "AWS Error NETWORK_CONNECTION" in str(exc)


def dependency_error(exc: BaseException) -> DomainError | None:
    """The API error for an exception that means a dependency or the client's connection
    failed, not our code: a 503 for a database, cache, broker or object-store connection failure
    (SQLite's "database is locked" after its busy timeout included; S3's throttling and server
    errors), a 408 for a body that broke off or timed out.
    None for anything else (a real bug stays a 500).

    Outages are logged once per RETRY_AFTER_SECONDS per dependency, not once per request.
    """
    if isinstance(exc, DatabaseOperationalError | DatabaseInterfaceError):
        _log_outage("database", exc)
        return UnavailableError("The database is unavailable; try again shortly.").with_type(
            "database_unavailable"
        )
    if _CACHE_ERRORS and isinstance(exc, _CACHE_ERRORS):
        _log_outage("cache", exc)
        return UnavailableError("The cache is unavailable; try again shortly.").with_type(
            "cache_unavailable"
        )
    if _storage_unavailable(exc):
        _log_outage("storage", exc)
        return UnavailableError(
            "The artifact storage is unavailable; try again shortly."
        ).with_type("storage_unavailable")
    if BROKER_ERRORS and isinstance(exc, BROKER_ERRORS):
        _log_outage("broker", exc)
        return UnavailableError(
            "The task queue's broker is unavailable; try again shortly."
        ).with_type("broker_unavailable")
    if isinstance(exc, DatabaseDataError):
        # A value the database cannot store (out of range, a character it refuses) that
        # validation let through: the client's input, not an outage, and nothing was written.
        return ValidationFailed(
            f"A value cannot be stored: {str(exc).splitlines()[0] if str(exc) else 'invalid'}."
        ).with_type("invalid_data")
    if isinstance(exc, UnreadablePostError | TimeoutError):
        return RequestTimeout("The request body did not arrive in time, or broke off.")
    return None


def _log_outage(name: str, exc: BaseException) -> None:
    now = time.monotonic()
    if now - _outage_logged[name] < RETRY_AFTER_SECONDS:
        return
    _outage_logged[name] = now
    logger.warning(
        "%s unavailable: answering 503", name, extra={"error": f"{type(exc).__name__}: {exc}"}
    )


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
    if not isinstance(exc, DomainError | drf_exceptions.APIException):
        exc = dependency_error(exc) or exc
    if isinstance(exc, DomainError):
        return Response(
            error_body(exc.error_type, exc.message, exc.fields, request_id),
            status=exc.status_code,
            headers=_retry_headers(exc.status_code),
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


def _retry_headers(status: int) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else {}


def _json_error(request, status: int, error_type: str, message: str) -> JsonResponse:
    return JsonResponse(
        error_body(error_type, message, None, getattr(request, "request_id", None)),
        status=status,
        headers=_retry_headers(status),
    )


def get_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """Django's require_GET (GET and HEAD) for the plain views outside DRF (health, metrics,
    the landing page), answering another method with the API's JSON error body and an
    `Allow` header rather than Django's empty text/html 405."""

    @functools.wraps(view)
    def wrapper(request, *args: Any, **kwargs: Any) -> Any:
        if request.method not in ("GET", "HEAD"):
            response = _json_error(
                request, 405, "method_not_allowed", f'Method "{request.method}" not allowed.'
            )
            response["Allow"] = "GET, HEAD"
            return response
        return view(request, *args, **kwargs)

    return wrapper


def handler404(request, exception=None):
    return _json_error(request, 404, "not_found", f"No route for {request.path}.")


def handler500(request):
    """Django calls this inside its `except` block, so the exception is still at hand: a
    dependency outage outside DRF's views (admin, health, metrics, middleware) is a 503 too."""
    error = dependency_error(sys.exc_info()[1]) if sys.exc_info()[1] is not None else None
    if error is not None:
        return _json_error(request, error.status_code, error.error_type, error.message)
    return _json_error(request, 500, "server_error", "Internal server error.")


def handler400(request, exception=None):
    """Django's SuspiciousOperation answers; the request-size ones say which limit (a form
    field larger than DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 like a JSON body that is)."""
    from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent

    if isinstance(exception, RequestDataTooBig):
        return _json_error(
            request,
            413,
            "payload_too_large",
            "The form fields are larger than DATA_UPLOAD_MAX_MEMORY_SIZE bytes (a file field "
            "is not counted: send large content as a file).",
        )
    if isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        return _json_error(request, 400, "bad_request", f"Too many form parts: {exception}")
    return _json_error(request, 400, "bad_request", "Bad request.")


def handler403(request, exception=None):
    return _json_error(request, 403, "permission_denied", "Permission denied.")
